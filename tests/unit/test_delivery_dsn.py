"""DSN on the way out (RFC 3461): what a job passes on, and what the queue reports of it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import pytest

from libs.common.contract.events import (
    Client,
    DeliveryAttempted,
    DeliveryJob,
    DeliverySucceeded,
    Destination,
    Event,
    MessageReceived,
    Recipient,
    RecipientsDelivered,
)
from services.delivery.core import Reply, result_events
from services.delivery.core.dsn import mail_parameters, rcpt_parameters
from services.queue.core import DeleteBody, MessageState, Output, Routing, apply, apply_outputs
from services.queue.core import decide as queue_decide

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)


def job(*recipients: Recipient, envid: str | None = None, ret: str | None = None) -> DeliveryJob:
    return DeliveryJob.model_validate(
        {
            "job_id": "Q1.a1.d0",
            "queue_id": "Q1",
            "attempt": 1,
            "destination": Destination(kind="relay"),
            "mail_from": "alice@example.test",
            "recipients": recipients or (Recipient(address="bob@remote.test"),),
            "size": 10,
            "envid": envid,
            "ret": ret,
        }
    )


@pytest.mark.parametrize(
    ("envid", "ret", "params"),
    [
        (None, None, []),
        ("QF-2026-11", None, ["ENVID=QF-2026-11"]),
        ("a+b=c d", "HDRS", ["RET=HDRS", "ENVID=a+2Bb+3Dc+20d"]),
        (None, "FULL", ["RET=FULL"]),
        ("", None, []),
    ],
)
def test_mail_parameters(envid: str | None, ret: str | None, params: list[str]) -> None:
    assert mail_parameters(job(envid=envid, ret=ret)) == params


@pytest.mark.parametrize(
    ("recipient", "params"),
    [
        (Recipient(address="b@r.test"), []),
        (Recipient(address="b@r.test", notify=("NEVER",)), ["NOTIFY=NEVER"]),
        (
            Recipient(address="b@r.test", notify=("success", "DELAY")),
            ["NOTIFY=SUCCESS,DELAY"],
        ),
        (
            Recipient(address="b@r.test", orcpt="rfc822;Bob+x@R.test", notify=("FAILURE",)),
            ["NOTIFY=FAILURE", "ORCPT=rfc822;Bob+2Bx@R.test"],
        ),
        (
            Recipient(address="b@r.test", orcpt="utf-8;j\u00e9@r.test"),
            ["ORCPT=utf-8;j\\x{E9}@r.test"],
        ),
    ],
)
def test_rcpt_parameters(recipient: Recipient, params: list[str]) -> None:
    assert rcpt_parameters(recipient) == params


@pytest.mark.parametrize("remote_dsn", [True, False, None])
def test_only_successes_say_whether_the_server_offered_dsn(remote_dsn: bool | None) -> None:
    the_job = job(Recipient(address="x@r.test"), Recipient(address="y@r.test"))
    events = result_events(
        the_job,
        [Reply(250, "2.0.0 ok"), Reply(550, "5.1.1 unknown")],
        remote_host="relay.test",
        tls_version=None,
        worker="w1",
        now=NOW,
        remote_dsn=remote_dsn,
    )
    succeeded, failed = events
    assert isinstance(succeeded, DeliverySucceeded) and succeeded.remote_dsn is remote_dsn
    assert "remote_dsn" not in failed.model_dump()
    # Every result names its job's destination: the record of a first attempt.
    assert succeeded.destination == failed.destination == the_job.destination


# --- the queue: which successes it reports, and how -----------------------------------


def run(events: list[Event]) -> tuple[MessageState, list[Output]]:
    routing = Routing.of("relay", ["example.test"])
    state = MessageState()
    produced: list[Output] = []
    for event in events:
        outputs = queue_decide(state, event, NOW, routing)
        state = apply_outputs(apply(state, event), outputs)
        produced.extend(outputs)
    return state, produced


def succeeded(
    job_id: str,
    recipient: str,
    remote_dsn: bool | None,
    destination: Destination | None = None,
    remote_host: str = "",
) -> DeliverySucceeded:
    return DeliverySucceeded(
        destination=destination,
        remote_host=remote_host,
        event_id=f"{job_id}.{recipient}",
        queue_id="Q1",
        occurred_at=NOW,
        job_id=job_id,
        attempt=1,
        recipient=recipient,
        reply_code=250,
        status="2.0.0",
        remote_dsn=remote_dsn,
    )


@pytest.mark.parametrize(
    ("address", "remote_dsn", "action"),
    [
        ("bob@remote.test", False, "relayed"),
        ("bob@remote.test", None, "relayed"),  # results from before remote_dsn existed
        ("bob@remote.test", True, None),  # the next server got NOTIFY=SUCCESS and reports
        ("bob@example.test", None, "delivered"),
    ],
)
def test_success_reports(
    address: str, remote_dsn: bool | None, action: Literal["relayed", "delivered"] | None
) -> None:
    received = MessageReceived(
        event_id="Q1.received",
        queue_id="Q1",
        occurred_at=NOW,
        mail_from="alice@example.test",
        recipients=(Recipient(address=address, notify=("SUCCESS",)),),
        size=42,
        client=Client(ip="127.0.0.1"),
    )
    _, scheduled = run([received])
    (the_job,) = [o for o in scheduled if isinstance(o, DeliveryJob)]
    # The job's destination travels on its results, as the worker writes them.
    done = succeeded(the_job.job_id, address, remote_dsn, the_job.destination)
    _, out = run([received, done])
    reports = [o for o in out if isinstance(o, RecipientsDelivered)]
    if action is None:
        assert reports == []
        assert DeleteBody("Q1") in out  # no report to wait for
    else:
        (report,) = reports
        assert [(o.address, o.action) for o in report.outcomes] == [(address, action)]
        assert DeleteBody("Q1") not in out  # the notifier may attach the headers


@pytest.mark.parametrize(
    ("remote_host", "action"), [("mailbox", "delivered"), ("mx.test", "relayed")]
)
def test_success_of_a_worker_older_than_destination(remote_host: str, action: str) -> None:
    """A first attempt's result without a destination (a worker from before the field, in
    a rolling upgrade): a local delivery is told by the host its results name."""
    received = MessageReceived(
        event_id="Q1.received",
        queue_id="Q1",
        occurred_at=NOW,
        mail_from="alice@example.test",
        recipients=(Recipient(address="bob@example.test", notify=("SUCCESS",)),),
        size=42,
        client=Client(ip="127.0.0.1"),
    )
    _, out = run([received, succeeded("Q1.a1.d0", "bob@example.test", None, None, remote_host)])
    (report,) = [o for o in out if isinstance(o, RecipientsDelivered)]
    assert [o.action for o in report.outcomes] == [action]


@pytest.mark.parametrize("remote_dsn", [True, None])
def test_a_job_that_asks_gets_one_event_with_the_same_facts(remote_dsn: bool | None) -> None:
    """`one_result`: one DeliveryAttempted, which reads back as exactly the per-recipient
    events a job without it gets (ids, replies, remote_dsn only on successes)."""
    rcpts = (
        Recipient(address="x@r.test"),
        Recipient(address="y@r.test"),
        Recipient(address="z@r.test"),
    )
    replies = [Reply(250, "2.0.0 ok"), Reply(550, "5.1.1 unknown"), Reply(451, "4.3.0 later")]
    common = {
        "remote_host": "relay.test",
        "tls_version": "TLSv1.3",
        "worker": "w1",
        "now": NOW,
        "remote_dsn": remote_dsn,
    }
    old = result_events(job(*rcpts), replies, **common)  # type: ignore[arg-type]
    asked = job(*rcpts).model_copy(update={"one_result": True})
    (attempted,) = result_events(asked, replies, **common)  # type: ignore[arg-type]
    assert isinstance(attempted, DeliveryAttempted)
    assert attempted.event_id == "Q1.a1.d0.results"
    assert [r.outcome for r in attempted.results] == ["succeeded", "failed", "deferred"]
    assert list(attempted.per_recipient()) == old
