"""The base of every record mailbus keeps as JSON in a KV bucket or a stream message.

A record is a frozen pydantic model: `encode` writes it, `decode` reads it and
raises the record's own `unreadable` error for a value that does not parse.
What is written is byte for byte what the hand-written codecs before wrote
(`json.dumps`, keys sorted, times in `isoformat`), so replicas of two versions
read each other's records during a rolling upgrade. Pure: pydantic only.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, PlainSerializer, ValidationError

_ISO = PlainSerializer(datetime.isoformat, return_type=str, when_used="json")

# A stored time, written as Python writes it ("+00:00", not pydantic's "Z").
Time = Annotated[datetime, _ISO]
# A stored time that must carry its zone: one without cannot be compared with `now`.
ZonedTime = Annotated[AwareDatetime, _ISO]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)

    # What `decode` raises for a value that does not parse; each record names its own.
    unreadable: ClassVar[type[ValueError]] = ValueError

    def stored(self) -> dict[str, Any]:
        """The JSON object kept: the fields, keys sorted."""
        return dict(sorted(self.model_dump(mode="json").items()))

    @classmethod
    def from_stored(cls, raw: Any) -> Self:
        """The record from the JSON value `stored` wrote."""
        return cls.model_validate(raw)

    def encode(self) -> bytes:
        return json.dumps(self.stored()).encode()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        try:
            return cls.from_stored(json.loads(data))
        except ValidationError as exc:
            raise cls.unreadable(f"unreadable {cls.__name__}: {first_error(exc)}") from None
        except ValueError as exc:  # not JSON (nor UTF-8) at all
            raise cls.unreadable(f"unreadable {cls.__name__}: {exc}") from None


def first_error(exc: ValidationError) -> str:
    """The first thing pydantic found wrong, where it is and what: one line for a log."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    where = ".".join(str(part) for part in errors[0]["loc"])
    return f"{where}: {errors[0]['msg']}" if where else errors[0]["msg"]
