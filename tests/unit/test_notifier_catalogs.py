"""Every report catalog is complete, current and well-formed.

A catalog fails here on an empty or fuzzy entry, a msgid it lacks or one the
code no longer uses, wrong plural forms, or placeholders that differ from the
English text. After changing a string in services/notifier/core/text.py:
  pybabel extract --no-location --project=mailbus --version=1 \
    -k gettext -k ngettext:1,2 --no-default-keywords \
    -o services/notifier/locales/mailbus.pot services/notifier/core/text.py
  pybabel update -d services/notifier/locales -D mailbus -i services/notifier/locales/mailbus.pot
then translate what became fuzzy or empty.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po

from libs.common.mail import languages
from services.notifier.adapters.catalogs import LOCALES, load_catalog, po_path

TEXT_SOURCE = Path(__file__).parents[2] / "services" / "notifier" / "core" / "text.py"
KEYWORDS = {"gettext": None, "ngettext": (1, 2)}


def _read(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale)


def _key(msgid: object) -> str:
    return str(msgid[0] if isinstance(msgid, tuple | list) else msgid)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


TEMPLATE = _read(LOCALES / "mailbus.pot")
TEMPLATE_IDS = {_key(m.id): m.id for m in TEMPLATE if m.id}


def test_catalog_directories_are_the_available_languages() -> None:
    found = {p.parent.parent.name for p in LOCALES.glob("*/LC_MESSAGES/mailbus.po")}
    assert found == set(languages.AVAILABLE)
    assert languages.DEFAULT in found


def test_template_is_what_the_code_uses() -> None:
    extracted = {
        message if isinstance(message, str) else message[0]
        for _, message, _, _ in extract_from_file(
            "python", str(TEXT_SOURCE), keywords=KEYWORDS, comment_tags=()
        )
    }
    assert extracted == set(TEMPLATE_IDS), "re-extract mailbus.pot (see this module's docstring)"


@pytest.mark.parametrize("lang", languages.AVAILABLE)
def test_catalog_is_complete(lang: str) -> None:
    catalog = _read(po_path(lang), locale=lang)
    assert str(catalog.locale) == lang
    assert not catalog.fuzzy, "the header is marked fuzzy"
    assert catalog.num_plurals == get_plural(lang).num_plurals
    assert re.sub(r"\s", "", catalog.plural_forms) == re.sub(
        r"\s", "", get_plural(lang).plural_forms
    )
    ids = {_key(m.id): m for m in catalog if m.id}
    assert set(ids) == set(TEMPLATE_IDS), "catalog lacks or keeps messages the template has not"
    for key, message in ids.items():
        assert "fuzzy" not in message.flags, f"{lang}: fuzzy: {key!r}"
        assert message.id == TEMPLATE_IDS[key], f"{lang}: plural msgid differs: {key!r}"
        forms = tuple(
            str(f)
            for f in (message.string if isinstance(message.string, tuple) else (message.string,))
        )
        assert isinstance(message.string, tuple) == isinstance(message.id, tuple), key
        if isinstance(message.id, tuple):
            assert len(forms) == catalog.num_plurals, f"{lang}: plural forms of {key!r}"
        english = tuple(
            str(e) for e in (message.id if isinstance(message.id, tuple) else (message.id,))
        )
        expected = set().union(*(_fields(e) for e in english))
        for form in forms:
            assert form.strip(), f"{lang}: empty translation of {key!r}"
            assert _fields(form) <= expected, f"{lang}: unknown placeholder in {key!r}"
            # Every placeholder but the count must survive translation.
            assert expected - {"count"} <= _fields(form), f"{lang}: lost placeholder in {key!r}"
    assert not catalog.obsolete, f"{lang}: obsolete entries left in the catalog"


@pytest.mark.parametrize("lang", languages.AVAILABLE)
def test_catalog_compiles_and_translates(lang: str) -> None:
    compiled = load_catalog(lang)
    title = compiled.gettext("Undelivered mail")
    assert title
    if lang != "en":
        assert title != "Undelivered mail"
