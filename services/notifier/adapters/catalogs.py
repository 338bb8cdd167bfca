"""The report catalogs: .po sources compiled in memory when the service starts.

Compiling at start keeps binaries out of the repository and means a catalog
that is edited is a catalog that is used, with no build step to forget.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Mapping
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from libs.common.mail import languages

LOCALES = Path(__file__).resolve().parent.parent / "locales"
DOMAIN = "mailbus"


def po_path(language: str, root: Path = LOCALES) -> Path:
    return root / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def load_catalog(language: str, root: Path = LOCALES) -> gettext.GNUTranslations:
    with po_path(language, root).open("rb") as source:
        catalog = read_po(source, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def load_catalogs(root: Path = LOCALES) -> Mapping[str, gettext.GNUTranslations]:
    """Every language of `languages.AVAILABLE`; a missing catalog stops the start."""
    return {lang: load_catalog(lang, root) for lang in languages.AVAILABLE}
