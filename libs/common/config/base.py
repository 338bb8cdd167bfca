"""The base of every configuration model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    """Frozen, and strict about keys: a misspelled key must fail, not be ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: object) -> object:
        # "tls:" with every key commented out is null in YAML; it means "the defaults".
        return {} if data is None else data
