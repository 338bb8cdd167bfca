"""One golden JSON per event type and version keeps the wire format honest.

A failing test here means a change broke compatibility with events already in
streams. Within a version only optional fields may be added; then regenerate
with `MAILBUS_REGEN_GOLDEN=1 pytest tests/unit/test_events_golden.py` and review
the diff: old fields must be unchanged.

The cases are the members of the event unions (EVENT_TYPES, ACCESS_EVENT_TYPES),
so a type added to a union fails here until it has a sample and a golden file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

from libs.common.contract import events as ev
from libs.common.contract.antispam import AntispamResults, SpamVerdict, SpfResult

E = TypeVar("E", ev.Event, ev.AccessEvent)

GOLDEN = Path(__file__).parent.parent / "golden"
AT = datetime(2026, 11, 28, 3, 30, 0, tzinfo=UTC)

SAMPLES: list[ev.Event] = [
    ev.MessageReceived(
        event_id="Q1.received",
        queue_id="Q1",
        occurred_at=AT,
        mail_from="alice@example.test",
        recipients=(ev.Recipient(address="bob@remote.test", orcpt="rfc822;bob@remote.test"),),
        size=1234,
        client=ev.Client(ip="192.0.2.1", port=40000, helo="client.test", listener="smtp"),
        tls=ev.TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384"),
        auth_user="alice@example.test",
        policy_rules=("connect_ok", "allowed_ip_group", "data_ok"),
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        antispam=AntispamResults(
            spf=SpfResult(
                result="softfail",
                identity="mailfrom",
                sender="alice@example.test",
                domain="example.test",
                client_ip="192.0.2.1",
                helo="client.test",
                explanation="domain owner discourages use of this host",
            ),
            spam=SpamVerdict(result="clean", score=1.5, tag_score=5.0, tests=("MISSING_DATE",)),
        ),
        config_revision=7,
    ),
    ev.DeliveryScheduled(
        event_id="Q1.a1.d0.scheduled",
        queue_id="Q1",
        occurred_at=AT,
        job_id="Q1.a1.d0",
        attempt=1,
        destination=ev.Destination(kind="relay"),
        recipients=("bob@remote.test",),
    ),
    *(
        cls(
            event_id=f"Q1.a1.d0.r0.{cls.__name__}",
            queue_id="Q1",
            occurred_at=AT,
            job_id="Q1.a1.d0",
            attempt=1,
            recipient="bob@remote.test",
            remote_host="relay.test[192.0.2.9]:25",
            reply_code=code,
            reply_text=text,
            status=status,
            tls_version="TLSv1.3",
            worker="w1",
            timings=ev.DeliveryTimings(scheduled_at=AT, setup_s=0.25, transfer_s=0.5),
        )
        for cls, code, text, status in (
            (ev.DeliverySucceeded, 250, "2.0.0 Ok", "2.0.0"),
            (ev.DeliveryDeferred, 451, "4.3.0 Try later", "4.3.0"),
            (ev.DeliveryFailed, 550, "5.1.1 No such user", "5.1.1"),
        )
    ),
    ev.DeliveryAttempted(
        event_id="Q1.a1.d0.results",
        queue_id="Q1",
        occurred_at=AT,
        job_id="Q1.a1.d0",
        attempt=1,
        results=(
            ev.RecipientResult(
                recipient="bob@remote.test",
                outcome="succeeded",
                reply_code=250,
                reply_text="2.0.0 Ok",
                status="2.0.0",
            ),
            ev.RecipientResult(
                recipient="carol@remote.test",
                outcome="failed",
                reply_code=550,
                reply_text="5.1.1 No such user",
                status="5.1.1",
            ),
        ),
        remote_host="relay.test[192.0.2.9]:25",
        tls_version="TLSv1.3",
        worker="w1",
        timings=ev.DeliveryTimings(scheduled_at=AT, setup_s=0.25, transfer_s=0.5),
        destination=ev.Destination(kind="relay"),
        remote_dsn=True,
    ),
    ev.MessageDelayed(
        event_id="Q1.delayed", queue_id="Q1", occurred_at=AT, recipients=("bob@remote.test",)
    ),
    ev.MessageExpired(
        event_id="Q1.expired", queue_id="Q1", occurred_at=AT, recipients=("bob@remote.test",)
    ),
    ev.RecipientsFailed(
        event_id="Q1.a1.failed",
        queue_id="Q1",
        occurred_at=AT,
        attempt=1,
        outcomes=(
            ev.RecipientOutcome(
                address="bob@remote.test",
                action="failed",
                status="5.1.1",
                remote_host="mx.remote.test",
                diagnostic="550 5.1.1 No such user",
                last_attempt_at=AT,
            ),
        ),
    ),
    ev.RecipientsDelivered(
        event_id="Q1.a1.delivered",
        queue_id="Q1",
        occurred_at=AT,
        attempt=1,
        outcomes=(
            ev.RecipientOutcome(
                address="carol@remote.test", action="relayed", status="2.0.0", last_attempt_at=AT
            ),
        ),
    ),
    ev.ReportSent(
        event_id="Q1.a1.failed.report",
        queue_id="Q1",
        occurred_at=AT,
        trigger_event_id="Q1.a1.failed",
        kind="failure",
        report_queue_id="Q2",
    ),
    ev.MessageCompleted(
        event_id="Q1.completed",
        queue_id="Q1",
        occurred_at=AT,
        delivered=("bob@remote.test",),
        failed=(),
    ),
    ev.MessageHeld(event_id="Q1.held.1", queue_id="Q1", occurred_at=AT, operator="root"),
    ev.MessageReleased(event_id="Q1.released.1", queue_id="Q1", occurred_at=AT, operator="root"),
    ev.MessageDeleted(
        event_id="Q1.deleted",
        queue_id="Q1",
        occurred_at=AT,
        operator="root",
        recipients=("bob@remote.test",),
    ),
]


ACCESS_SAMPLES: list[ev.AccessEvent] = [
    ev.Pop3LoginSucceeded(
        event_id="pop3.s1.login",
        occurred_at=AT,
        client_ip="192.0.2.7",
        user="alice@example.test",
        listener="pop3",
        session_id="s1",
    ),
    ev.ClientBlocked(
        event_id="block.MTkyLjAuMi44.20261128T033000",
        occurred_at=AT,
        client_ip="192.0.2.8",
        reason="3 unknown local recipients within an hour (directory harvest)",
        rule="directory_harvest",
        start=AT,
        end=datetime(2026, 11, 28, 4, 30, 0, tzinfo=UTC),
    ),
    ev.ClientUnblocked(
        event_id="unblock.MTkyLjAuMi44.20261128T033000",
        occurred_at=AT,
        client_ip="192.0.2.8",
        block_start=AT,
        operator="root",
    ),
]


def _type_name(cls: type[BaseModel]) -> str:
    return cls.__name__


def _name(event: ev.Event | ev.AccessEvent) -> str:
    return f"{ev.event_type(event)}.v{event.version}.json"


def _check_golden(sample: ev.Event | ev.AccessEvent) -> dict[str, object]:
    """Today's encoding keeps every field of the golden file; returns the golden."""
    path = GOLDEN / _name(sample)
    wire = json.loads(sample.model_dump_json())
    if os.environ.get("MAILBUS_REGEN_GOLDEN"):
        path.write_text(json.dumps(wire, indent=2, sort_keys=True) + "\n")
    golden: dict[str, object] = json.loads(path.read_text())
    for key, value in golden.items():
        assert wire[key] == value, key
    return golden


def test_every_event_type_has_a_sample() -> None:
    assert {type(s) for s in SAMPLES} == set(ev.EVENT_TYPES)


def test_every_access_event_type_has_a_sample() -> None:
    assert {type(s) for s in ACCESS_SAMPLES} == set(ev.ACCESS_EVENT_TYPES)


def _defined(base: type[BaseModel]) -> set[type[BaseModel]]:
    """The classes of `events` with a `type` literal: the ones that go on the wire."""
    return {
        cls
        for cls in vars(ev).values()
        if isinstance(cls, type) and issubclass(cls, base) and "type" in cls.model_fields
    }


def test_every_event_class_is_in_its_union() -> None:
    # A class left out of AnyEvent would never parse; EVENT_TYPES is read off the union.
    assert _defined(ev.Event) == set(ev.EVENT_TYPES)
    assert _defined(ev.AccessEvent) == set(ev.ACCESS_EVENT_TYPES)


@pytest.mark.parametrize("cls", [*ev.EVENT_TYPES, *ev.ACCESS_EVENT_TYPES], ids=_type_name)
def test_type_literal_is_the_class_name(cls: type[ev.Event] | type[ev.AccessEvent]) -> None:
    # event_type() and the golden file names rely on it.
    assert cls.model_fields["type"].default == cls.__name__


SERVICES = ("ingress", "policy", "queue", "delivery", "notifier")


@pytest.mark.parametrize("cls", [*ev.EVENT_TYPES, *ev.ACCESS_EVENT_TYPES], ids=_type_name)
def test_every_type_names_its_publishers(cls: type[ev.Event] | type[ev.AccessEvent]) -> None:
    # The bus permissions are derived from `publishers`: a type with none could never
    # be published under them, and a misspelt service would grant nobody.
    assert cls.publishers, f"{cls.__name__}.publishers is empty"
    assert set(cls.publishers) <= set(SERVICES), cls.publishers


def _samples_of(cls: type[E], samples: Sequence[BaseModel]) -> list[E]:
    found = [s for s in samples if isinstance(s, cls)]
    assert found, f"no golden sample for {cls.__name__}: add one to the samples, then regenerate"
    return found


@pytest.mark.parametrize("cls", ev.EVENT_TYPES, ids=_type_name)
def test_golden(cls: type[ev.Event]) -> None:
    for sample in _samples_of(cls, SAMPLES):
        # Today's encoding must not drop or rename a field of the golden file...
        golden = _check_golden(sample)
        # ...and old events must still parse into the same model.
        assert ev.parse_event(json.dumps(golden)) == sample


@pytest.mark.parametrize("cls", ev.ACCESS_EVENT_TYPES, ids=_type_name)
def test_access_golden(cls: type[ev.AccessEvent]) -> None:
    for sample in _samples_of(cls, ACCESS_SAMPLES):
        golden = _check_golden(sample)
        assert ev.parse_access_event(json.dumps(golden)) == sample
