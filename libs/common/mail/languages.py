"""The languages mailbus writes its reports in, and how a language tag picks one.

The config validates `queue.report_language` against this list and the notifier
loads one catalog per entry, so the list lives here, where both can read it
without the config depending on a service. A unit test keeps it equal to the
catalogs in services/notifier/locales.
"""

from __future__ import annotations

from collections.abc import Iterable

# ISO 639-1 codes, in the order `config check` lists them.
AVAILABLE: tuple[str, ...] = (
    "en",
    "cs",
    "de",
    "fr",
    "es",
    "it",
    "pl",
    "ru",
    "sk",
    "pt",
    "nl",
    "ja",
)
DEFAULT = "en"


def match(tag: str) -> str | None:
    """The catalog for a language tag: exact, else by its primary subtag ("pt-BR" -> "pt")."""
    cleaned = tag.strip().replace("_", "-").lower()
    if cleaned in AVAILABLE:
        return cleaned
    primary = cleaned.split("-", 1)[0]
    return primary if primary in AVAILABLE else None


def first_match(tags: Iterable[str]) -> str | None:
    for tag in tags:
        found = match(tag)
        if found is not None:
            return found
    return None


def content_language_tags(value: str) -> list[str]:
    """Tags of a Content-Language header (RFC 3282), in the order given."""
    return [_strip_comment(part) for part in value.split(",") if _strip_comment(part)]


def accept_language_tags(value: str) -> list[str]:
    """Tags of an Accept-Language header, most preferred first; q=0 means "not this"."""
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(value.split(",")):
        tag, _, params = _strip_comment(part).partition(";")
        tag = tag.strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, raw = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(raw)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(weighted)]


def _strip_comment(text: str) -> str:
    # RFC 3282 allows (comments) around tags; no catalog name contains parentheses.
    out: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(char)
    return "".join(out).strip()
