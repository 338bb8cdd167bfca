"""The queue core over time: retries, delay warning, expiry, reports, hold/release/delete.

Each test feeds inputs (events and fired timers) through `decide` at given
times, the way the adapter does, and looks at what came out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from libs.common.contract.events import (
    Client,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliveryScheduled,
    DeliverySucceeded,
    Event,
    MessageCompleted,
    MessageDelayed,
    MessageDeleted,
    MessageExpired,
    MessageHeld,
    MessageReceived,
    MessageReleased,
    Recipient,
    RecipientsDelivered,
    RecipientsFailed,
    ReportSent,
)
from services.queue.core import (
    ClearTimers,
    DeleteBody,
    MessageState,
    Output,
    Routing,
    SetTimer,
    TimerFired,
    Timing,
    apply,
    apply_outputs,
    decide,
    fold,
    summarize,
)

T0 = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
QID = "Q1"
MX = Routing.of("mx", ["example.test"])
TIMING = Timing(
    retry_interval=timedelta(minutes=10),
    warn_after=timedelta(hours=1),
    bounce_after=timedelta(hours=3),
)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def received(
    *rcpts: str | Recipient, sender: str = "alice@example.test", report_of: str | None = None
) -> MessageReceived:
    return MessageReceived(
        event_id=f"{QID}.received",
        queue_id=QID,
        occurred_at=T0,
        mail_from=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(address=r) for r in rcpts),
        size=42,
        client=Client(ip="127.0.0.1"),
        report_of=report_of,
    )


RESULTS: dict[str, type[DeliverySucceeded | DeliveryDeferred | DeliveryFailed]] = {
    "ok": DeliverySucceeded,
    "defer": DeliveryDeferred,
    "fail": DeliveryFailed,
}
CODES = {"ok": 250, "defer": 451, "fail": 550}


def result(kind: str, job: str, rcpt: str, minutes: float) -> Event:
    code = CODES[kind]
    return RESULTS[kind](
        event_id=f"{job}.{rcpt}",
        queue_id=QID,
        occurred_at=at(minutes),
        job_id=job,
        attempt=int(job.split(".a")[1].split(".")[0]),
        recipient=rcpt,
        remote_host="mx.remote.test",
        reply_code=code,
        reply_text=f"{str(code)[0]}.0.0 said the server",
        status=f"{str(code)[0]}.0.0",
    )


def fire(kind: str, minutes: float, forced: bool = False) -> TimerFired:
    return TimerFired.model_validate(
        {"queue_id": QID, "kind": kind, "due": at(minutes), "forced": forced}
    )


def held(n: int = 1) -> MessageHeld:
    return MessageHeld(event_id=f"{QID}.held.{n}", queue_id=QID)


def released(n: int = 1) -> MessageReleased:
    return MessageReleased(event_id=f"{QID}.released.{n}", queue_id=QID)


def answer(trigger: str) -> ReportSent:
    return ReportSent(
        event_id=f"{trigger}.report", queue_id=QID, trigger_event_id=trigger, kind="failure"
    )


Step = tuple[float, Event | TimerFired]


class Queue:
    """The adapter's loop without I/O: state, decide, apply outputs."""

    def __init__(self) -> None:
        self.state = MessageState()
        self.log: list[Output] = []

    def feed(self, steps: Sequence[Step]) -> list[Output]:
        produced: list[Output] = []
        for minutes, trigger in steps:
            outputs = decide(self.state, trigger, at(minutes), MX, TIMING)
            if not isinstance(trigger, TimerFired):
                self.state = apply(self.state, trigger)
            self.state = apply_outputs(self.state, outputs)
            produced.extend(outputs)
        self.log.extend(produced)
        return produced


def of_type(outputs: Sequence[Output], cls: type) -> list:  # type: ignore[type-arg]
    return [o for o in outputs if isinstance(o, cls)]


def jobs(outputs: Sequence[Output]) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (j.job_id, tuple(r.address for r in j.recipients)) for j in of_type(outputs, DeliveryJob)
    ]


def deferred_once() -> Queue:
    """a@ delivered, b@ deferred at minute 1, in attempt 1."""
    q = Queue()
    q.feed(
        [
            (0, received("a@one.test", "b@one.test")),
            (1, result("ok", "Q1.a1.d0", "a@one.test", 1)),
            (1, result("defer", "Q1.a1.d0", "b@one.test", 1)),
        ]
    )
    return q


# --- retries ------------------------------------------------------------------------------


def test_a_deferral_sets_the_retry_warning_and_expiry_timers() -> None:
    q = deferred_once()
    assert of_type(q.log, SetTimer) == [
        SetTimer(QID, "retry", at(11)),
        SetTimer(QID, "warn", at(60)),
        SetTimer(QID, "expire", at(180)),
    ]
    assert q.state.addresses("deferred") == ("b@one.test",)


def test_no_timer_for_a_message_delivered_at_once() -> None:
    q = Queue()
    q.feed([(0, received("a@one.test")), (1, result("ok", "Q1.a1.d0", "a@one.test", 1))])
    assert of_type(q.log, SetTimer) == of_type(q.log, ClearTimers) == []


def test_null_sender_gets_no_warning_timer() -> None:
    q = Queue()
    q.feed(
        [(0, received("a@one.test", sender="")), (1, result("defer", "Q1.a1.d0", "a@one.test", 1))]
    )
    assert [t.kind for t in of_type(q.log, SetTimer)] == ["retry", "expire"]


def test_retry_fire_starts_a_new_round_for_the_deferred_recipient_only() -> None:
    q = deferred_once()
    out = q.feed([(11, fire("retry", 11))])
    assert jobs(out) == [("Q1.a2.d0", ("b@one.test",))]
    assert [e.event_id for e in of_type(out, DeliveryScheduled)] == ["Q1.a2.d0.scheduled"]
    assert q.state.recipient("b@one.test").status == "scheduled"  # type: ignore[union-attr]


def test_stale_retry_fire_only_rearms_the_timer() -> None:
    q = deferred_once()
    assert q.feed([(5, fire("retry", 5))]) == [SetTimer(QID, "retry", at(11))]


def test_redelivered_retry_fire_schedules_nothing_twice() -> None:
    q = deferred_once()
    first = q.feed([(11, fire("retry", 11))])
    assert jobs(first)
    assert jobs(q.feed([(11.1, fire("retry", 11))])) == []


def test_recipients_deferred_close_together_share_a_round() -> None:
    q = Queue()
    q.feed(
        [
            (0, received("a@one.test", "b@two.test")),
            (1, result("defer", "Q1.a1.d0", "a@one.test", 1)),
            (1.5, result("defer", "Q1.a1.d1", "b@two.test", 1.5)),
        ]
    )
    out = q.feed([(11, fire("retry", 11))])
    # within retry_grace (a tenth of the interval) of each other: one round, two jobs
    assert jobs(out) == [("Q1.a2.d0", ("a@one.test",)), ("Q1.a2.d1", ("b@two.test",))]


def test_recipient_not_due_keeps_its_own_timer() -> None:
    q = Queue()
    q.feed(
        [
            (0, received("a@one.test", "b@two.test")),
            (1, result("defer", "Q1.a1.d0", "a@one.test", 1)),
            (6, result("defer", "Q1.a1.d1", "b@two.test", 6)),
        ]
    )
    out = q.feed([(11, fire("retry", 11))])
    assert jobs(out) == [("Q1.a2.d0", ("a@one.test",))]
    assert out[-1] == SetTimer(QID, "retry", at(16))


def test_forced_retry_attempts_every_deferred_recipient_now() -> None:
    q = deferred_once()
    out = q.feed([(2, fire("retry", 2, forced=True))])
    assert jobs(out) == [("Q1.a2.d0", ("b@one.test",))]


def test_retry_then_success_completes() -> None:
    q = deferred_once()
    q.feed([(11, fire("retry", 11)), (12, result("ok", "Q1.a2.d0", "b@one.test", 12))])
    assert q.state.completed and of_type(q.log, MessageCompleted) == []
    assert q.state.addresses("delivered") == ("a@one.test", "b@one.test")
    assert q.log[-2:] == [ClearTimers(QID), DeleteBody(QID)]


# --- delay warning ----------------------------------------------------------------------------


def test_delay_warning_once_with_outcomes() -> None:
    q = deferred_once()
    out = q.feed([(60, fire("warn", 60))])
    (warning,) = out
    assert isinstance(warning, MessageDelayed)
    assert warning.event_id == "Q1.delayed"
    assert warning.recipients == ("b@one.test",)
    (outcome,) = warning.outcomes
    assert (outcome.action, outcome.status, outcome.remote_host) == (
        "delayed",
        "4.0.0",
        "mx.remote.test",
    )
    assert outcome.diagnostic == "451 4.0.0 said the server"
    assert warning.will_retry_until == at(180)
    assert q.feed([(61, fire("warn", 60))]) == []  # redelivered or stale: once only
    assert q.state.delayed


@pytest.mark.parametrize(
    ("sender", "minutes"),
    [("", 60), ("alice@example.test", 30)],
    ids=["null-sender", "too-early"],
)
def test_no_delay_warning(sender: str, minutes: float) -> None:
    q = Queue()
    q.feed([(0, received("a@one.test", sender=sender))])
    assert q.feed([(minutes, fire("warn", minutes))]) == []


def test_no_delay_warning_once_delivered() -> None:
    q = Queue()
    q.feed([(0, received("a@one.test")), (1, result("ok", "Q1.a1.d0", "a@one.test", 1))])
    assert q.feed([(60, fire("warn", 60))]) == []


# --- expiry ---------------------------------------------------------------------------------


def test_expiry_fails_the_rest_and_keeps_the_body_for_the_report() -> None:
    q = deferred_once()
    out = q.feed([(180, fire("expire", 180))])
    expired, completed = of_type(out, MessageExpired), of_type(out, MessageCompleted)
    assert [e.event_id for e in expired] == ["Q1.expired"]
    assert expired[0].recipients == ("b@one.test",)
    assert [(o.action, o.status) for o in expired[0].outcomes] == [("failed", "4.4.7")]
    assert completed == []  # MessageExpired records who expired
    assert q.state.completed and q.state.addresses("failed") == ("b@one.test",)
    assert out[-1] == ClearTimers(QID)  # no DeleteBody yet
    assert q.feed([(181, answer("Q1.expired"))]) == [DeleteBody(QID)]


def deferral(job: str, rcpt: str, minutes: float, status: str) -> DeliveryDeferred:
    return DeliveryDeferred(
        event_id=f"{job}.{rcpt}",
        queue_id=QID,
        occurred_at=at(minutes),
        job_id=job,
        attempt=int(job.split(".a")[1].split(".")[0]),
        recipient=rcpt,
        reply_code=452 if status == "4.2.2" else 451,
        reply_text=f"{status} said the server",
        status=status,
    )


@pytest.mark.parametrize(
    ("deferrals", "expected"),
    [
        (["4.2.2"], "5.2.2"),  # the mailbox stayed full: say so, permanently
        (["4.4.1", "4.2.2"], "5.2.2"),
        (["4.2.2", "4.4.1"], "4.4.7"),  # the last deferral decides
        (["4.4.1"], "4.4.7"),
        (["4.7.1"], "4.4.7"),
        ([""], "4.4.7"),
    ],
)
def test_expiry_status_follows_the_last_deferral(deferrals: list[str], expected: str) -> None:
    q = Queue()
    q.feed([(0, received("b@one.test"))])
    for attempt, status in enumerate(deferrals, start=1):
        minutes = 11.0 * attempt
        if attempt > 1:
            q.feed([(minutes - 1, fire("retry", minutes - 1))])
        q.feed([(minutes, deferral(f"Q1.a{attempt}.d0", "b@one.test", minutes, status))])
    out = q.feed([(180, fire("expire", 180))])
    (expired,) = of_type(out, MessageExpired)
    assert [(o.action, o.status) for o in expired.outcomes] == [("failed", expected)]
    assert expired.outcomes[0].diagnostic.endswith(f"{deferrals[-1]} said the server")
    rcpt = q.state.recipient("b@one.test")
    assert rcpt is not None and (rcpt.status, rcpt.reply_status) == ("failed", expected)


def test_null_sender_over_quota_expires_as_mailbox_full_too() -> None:
    """No report, but the state (and `mailbus queue`) tells the same story."""
    q = Queue()
    q.feed(
        [
            (0, received("b@one.test", sender="")),
            (1, deferral("Q1.a1.d0", "b@one.test", 1, "4.2.2")),
            (180, fire("expire", 180)),
        ]
    )
    assert of_type(q.log, MessageExpired) == []
    rcpt = q.state.recipient("b@one.test")
    assert rcpt is not None and (rcpt.status, rcpt.reply_status) == ("failed", "5.2.2")


def test_null_sender_expires_without_a_report() -> None:
    q = Queue()
    q.feed(
        [
            (0, received("a@one.test", sender="")),
            (1, result("defer", "Q1.a1.d0", "a@one.test", 1)),
        ]
    )
    out = q.feed([(180, fire("expire", 180))])
    assert of_type(out, MessageExpired) == []
    (completed,) = of_type(out, MessageCompleted)
    assert completed.expired == ("a@one.test",)
    assert out[-2:] == [ClearTimers(QID), DeleteBody(QID)]
    assert fold([received("a@one.test", sender=""), completed]).recipients[0].expired


def test_expiry_waits_for_the_delivery_in_flight() -> None:
    q = deferred_once()
    q.feed([(170, fire("retry", 170))])
    assert q.feed([(180, fire("expire", 180))]) == []
    out = q.feed([(181, result("defer", "Q1.a2.d0", "b@one.test", 181))])
    assert [e.event_id for e in of_type(out, MessageExpired)] == ["Q1.expired"]


def test_a_success_in_flight_at_expiry_is_not_bounced() -> None:
    q = deferred_once()
    q.feed([(170, fire("retry", 170)), (180, fire("expire", 180))])
    q.feed([(181, result("ok", "Q1.a2.d0", "b@one.test", 181))])
    assert of_type(q.log, MessageExpired) == []
    assert q.state.completed
    assert q.state.addresses("delivered") == ("a@one.test", "b@one.test")


def test_retry_fire_after_bounce_after_expires() -> None:
    q = deferred_once()
    out = q.feed([(185, fire("retry", 185))])
    assert jobs(out) == [] and of_type(out, MessageExpired)


# --- round reports ---------------------------------------------------------------------------


def test_failures_reported_once_per_round_when_the_round_is_done() -> None:
    q = Queue()
    q.feed([(0, received("a@one.test", "b@two.test", "c@two.test"))])
    out = q.feed([(1, result("fail", "Q1.a1.d0", "a@one.test", 1))])
    assert of_type(out, RecipientsFailed) == []  # d1 still running
    out = q.feed(
        [
            (2, result("fail", "Q1.a1.d1", "b@two.test", 2)),
            (2, result("defer", "Q1.a1.d1", "c@two.test", 2)),
        ]
    )
    (report,) = of_type(out, RecipientsFailed)
    assert report.event_id == "Q1.a1.failed" and report.attempt == 1
    assert [(o.address, o.status, o.diagnostic) for o in report.outcomes] == [
        ("a@one.test", "5.0.0", "550 5.0.0 said the server"),
        ("b@two.test", "5.0.0", "550 5.0.0 said the server"),
    ]
    # attempt 2 fails c@: a second report, for c@ only
    out = q.feed([(12, fire("retry", 12)), (13, result("fail", "Q1.a2.d0", "c@two.test", 13))])
    (second,) = of_type(out, RecipientsFailed)
    assert second.event_id == "Q1.a2.failed"
    assert [o.address for o in second.outcomes] == ["c@two.test"]
    # the body waits for both answers
    assert DeleteBody(QID) not in out
    assert q.feed([(14, answer("Q1.a1.failed"))]) == []
    assert q.feed([(14, answer("Q1.a2.failed"))]) == [DeleteBody(QID)]


def test_success_reported_only_to_who_asked() -> None:
    q = Queue()
    out = q.feed(
        [
            (
                0,
                received(
                    Recipient(address="a@one.test", notify=("SUCCESS", "FAILURE")), "b@one.test"
                ),
            ),
            (1, result("ok", "Q1.a1.d0", "a@one.test", 1)),
            (1, result("ok", "Q1.a1.d0", "b@one.test", 1)),
        ]
    )
    (report,) = of_type(out, RecipientsDelivered)
    assert report.event_id == "Q1.a1.delivered"
    assert [(o.address, o.action) for o in report.outcomes] == [("a@one.test", "relayed")]
    assert DeleteBody(QID) not in out
    assert q.feed([(2, answer("Q1.a1.delivered"))]) == [DeleteBody(QID)]


def test_null_sender_gets_no_round_reports() -> None:
    q = Queue()
    out = q.feed(
        [
            (
                0,
                received(
                    Recipient(address="a@one.test", notify=("SUCCESS",)), "b@one.test", sender=""
                ),
            ),
            (1, result("ok", "Q1.a1.d0", "a@one.test", 1)),
            (1, result("fail", "Q1.a1.d0", "b@one.test", 1)),
        ]
    )
    assert of_type(out, RecipientsFailed) == of_type(out, RecipientsDelivered) == []
    assert out[-1] == DeleteBody(QID)


def test_a_failed_report_of_ours_is_reported() -> None:
    """Null sender, but one of our reports: the notifier sends its failure to the postmaster."""
    q = Queue()
    out = q.feed(
        [
            (0, received("alice@one.test", sender="", report_of="Q0")),
            (1, result("fail", "Q1.a1.d0", "alice@one.test", 1)),
        ]
    )
    (report,) = of_type(out, RecipientsFailed)
    assert [o.address for o in report.outcomes] == ["alice@one.test"]
    assert DeleteBody(QID) not in out  # the body waits for the notifier's answer
    assert q.feed([(2, answer("Q1.a1.failed"))]) == [DeleteBody(QID)]


def test_an_expired_report_of_ours_is_reported_but_never_warned_about() -> None:
    q = Queue()
    q.feed(
        [
            (0, received("alice@one.test", sender="", report_of="Q0")),
            (1, result("defer", "Q1.a1.d0", "alice@one.test", 1)),
        ]
    )
    assert [t.kind for t in of_type(q.log, SetTimer)] == ["retry", "expire"]
    out = q.feed([(180, fire("expire", 180))])
    (expired,) = of_type(out, MessageExpired)
    assert expired.recipients == ("alice@one.test",)
    assert DeleteBody(QID) not in out


def test_rebuilt_state_reports_nothing_twice() -> None:
    q = Queue()
    inputs: list[Step] = [
        (0, received("a@one.test")),
        (1, result("fail", "Q1.a1.d0", "a@one.test", 1)),
    ]
    q.feed(inputs)
    stream = [inputs[0][1], *[o for o in q.log if isinstance(o, Event)], inputs[1][1]]
    rebuilt = fold([e for e in stream if isinstance(e, Event)])
    again = decide(rebuilt, inputs[1][1], at(2), MX, TIMING)
    assert of_type(again, RecipientsFailed) == [] and of_type(again, MessageCompleted) == []


# --- hold, release, delete ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["retry", "expire"])
def test_held_message_neither_retries_nor_expires(kind: str) -> None:
    q = deferred_once()
    q.feed([(2, held())])
    assert q.feed([(200, fire(kind, 200))]) == []
    assert summarize(q.state, TIMING).state == "held"  # type: ignore[union-attr]


def test_release_attempts_at_once() -> None:
    q = deferred_once()
    q.feed([(2, held())])
    out = q.feed([(3, released())])
    assert jobs(out) == [("Q1.a2.d0", ("b@one.test",))]
    assert not q.state.held


def test_release_after_bounce_after_expires() -> None:
    q = deferred_once()
    q.feed([(2, held())])
    out = q.feed([(200, released())])
    assert of_type(out, MessageExpired)


def test_a_redelivered_hold_does_not_undo_a_later_release() -> None:
    state = fold([received("a@one.test"), held(1), released(1), held(1)])
    assert not state.held
    assert fold([received("a@one.test"), held(1), released(1), held(2)]).held


def test_delete_clears_timers_and_body_and_ignores_later_fires() -> None:
    q = deferred_once()
    deleted = MessageDeleted(event_id="Q1.deleted", queue_id=QID, recipients=("b@one.test",))
    assert q.feed([(2, deleted)]) == [ClearTimers(QID), DeleteBody(QID)]
    assert q.state.done and summarize(q.state, TIMING) is None
    assert q.feed([(11, fire("retry", 11)), (60, fire("warn", 60))]) == []


# --- queue list entries ------------------------------------------------------------------------


def test_summary_states() -> None:
    q = Queue()
    q.feed([(0, received("a@one.test", "b@one.test"))])
    entry = summarize(q.state, TIMING)
    assert entry is not None and entry.state == "active" and entry.next_attempt is None
    q = deferred_once()
    entry = summarize(q.state, TIMING)
    assert entry is not None
    assert (entry.state, entry.next_attempt, entry.recipients, entry.attempts) == (
        "deferred",
        at(11),
        ("b@one.test",),
        1,
    )
    assert entry.last_reply == "451 4.0.0 said the server"
