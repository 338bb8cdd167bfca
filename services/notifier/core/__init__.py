"""The notifier's pure core: which events ask for a report, whether one is due, and
the report itself as bytes. No I/O; the caller passes `now` and the catalogs."""

from .decide import NoReport, ReportedRecipient, ReportPlan, choose_language, decide
from .original import OriginalHeaders, read_headers
from .render import ReportInput, attachment, needs_utf8, render
from .text import Translator
from .triggers import TRIGGER_TYPES, Kind, Trigger, trigger_of

__all__ = [
    "TRIGGER_TYPES",
    "Kind",
    "NoReport",
    "OriginalHeaders",
    "ReportInput",
    "ReportPlan",
    "ReportedRecipient",
    "Translator",
    "Trigger",
    "attachment",
    "choose_language",
    "decide",
    "needs_utf8",
    "read_headers",
    "render",
    "trigger_of",
]
