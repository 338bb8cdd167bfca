"""Domains are encoded with IDNA 2008 (the `idna` package, UTS 46 non-transitional):
the standard library's codec is IDNA 2003 and turns faß.de into fass.de, which is
another domain with another owner."""

from __future__ import annotations

import pytest

from libs.common.config.fieldtypes import normalize_domain as config_domain
from services.policy.core.address import normalize_domain as policy_domain
from services.policy.core.address import parse_path
from services.policy.core.errors import AddressError


@pytest.mark.parametrize("normalize", [config_domain, policy_domain])
def test_sharp_s_stays_a_sharp_s(normalize: object) -> None:
    assert callable(normalize)
    assert normalize("faß.de") == "xn--fa-hia.de"
    assert normalize("Bücher.Example.") == "xn--bcher-kva.example"
    assert normalize("例え.テスト") == "xn--r8jz45g.xn--zckzah"


def test_a_recipient_at_an_idn_is_compared_in_a_labels() -> None:
    mailbox = parse_path("<user@faß.de>")
    assert mailbox is not None and mailbox.domain == "xn--fa-hia.de"


def test_what_idna_2008_forbids_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid domain"):
        config_domain("a\u2488.test")  # ⒈: allowed by IDNA 2003, not by 2008
    with pytest.raises(AddressError):
        policy_domain("a\u2488.test")
