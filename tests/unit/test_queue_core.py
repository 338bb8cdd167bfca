"""The queue core: fold, routing and decide, table-driven, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.contract.events import (
    Client,
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliveryScheduled,
    DeliverySucceeded,
    Destination,
    Event,
    MessageCompleted,
    MessageDelayed,
    MessageReceived,
    Recipient,
    RecipientResult,
)
from services.queue.core import (
    ClearTimers,
    DeleteBody,
    MessageState,
    Output,
    Routing,
    apply,
    apply_outputs,
    decide,
    fold,
)
from services.queue.core.routing import destination_for, domain_of, group_by_destination

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
QID = "Q1"
RELAY = Routing.of("relay", ["example.test"])
MX = Routing.of("mx", ["example.test", "Other.Local"])


def received(*addresses: str, qid: str = QID) -> MessageReceived:
    return MessageReceived(
        event_id=f"{qid}.received",
        queue_id=qid,
        occurred_at=NOW,
        mail_from="alice@example.test",
        recipients=tuple(Recipient(address=a, notify=("FAILURE",)) for a in addresses),
        size=42,
        client=Client(ip="127.0.0.1"),
        envid="ENV1",
        ret="HDRS",
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


RESULT_TYPES: dict[str, type[DeliverySucceeded | DeliveryDeferred | DeliveryFailed]] = {
    "ok": DeliverySucceeded,
    "defer": DeliveryDeferred,
    "fail": DeliveryFailed,
}


def result(kind: str, job_id: str, recipient: str, code: int = 250) -> Event:
    cls = RESULT_TYPES[kind]
    return cls(
        event_id=f"{job_id}.{recipient}",
        queue_id=QID,
        occurred_at=NOW,
        job_id=job_id,
        attempt=1,
        recipient=recipient,
        reply_code=code,
        status=f"{str(code)[0]}.0.0",
    )


def events_of(outputs: list[Output]) -> list[Event]:
    return [o for o in outputs if isinstance(o, DeliveryScheduled | MessageCompleted)]


def jobs_of(outputs: list[Output]) -> list[DeliveryJob]:
    return [o for o in outputs if isinstance(o, DeliveryJob)]


def run(events: list[Event], routing: Routing = RELAY) -> tuple[MessageState, list[Output]]:
    """Feed inputs through decide the way the adapter does, collecting every output."""
    state = MessageState()
    produced: list[Output] = []
    for event in events:
        outputs = decide(state, event, NOW, routing)
        state = apply_outputs(apply(state, event), outputs)
        produced.extend(outputs)
    return state, produced


# --- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("bob@Remote.Test", "remote.test"),
        ("bob@remote.test.", "remote.test"),
        ('"a@b"@remote.test', "remote.test"),
        ("postmaster", ""),
    ],
)
def test_domain_of(address: str, domain: str) -> None:
    assert domain_of(address) == domain


@pytest.mark.parametrize(
    ("address", "routing", "expected"),
    [
        ("bob@remote.test", RELAY, Destination(kind="relay")),
        ("bob@example.test", RELAY, Destination(kind="local", domain="example.test")),
        ("bob@EXAMPLE.test", RELAY, Destination(kind="local", domain="example.test")),
        ("bob@remote.test", MX, Destination(kind="mx", domain="remote.test")),
        ("bob@other.local", MX, Destination(kind="local", domain="other.local")),
        ("postmaster", MX, Destination(kind="local", domain="")),
    ],
)
def test_destination_for(address: str, routing: Routing, expected: Destination) -> None:
    assert destination_for(address, routing) == expected


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        (
            RELAY,
            [
                (Destination(kind="relay"), ("a@one.test", "b@two.test", "c@one.test")),
                (Destination(kind="local", domain="example.test"), ("d@example.test",)),
            ],
        ),
        (
            MX,
            [
                (Destination(kind="mx", domain="one.test"), ("a@one.test", "c@one.test")),
                (Destination(kind="mx", domain="two.test"), ("b@two.test",)),
                (Destination(kind="local", domain="example.test"), ("d@example.test",)),
            ],
        ),
    ],
)
def test_group_by_destination(
    routing: Routing, expected: list[tuple[Destination, tuple[str, ...]]]
) -> None:
    addresses = ["a@one.test", "b@two.test", "d@example.test", "c@one.test"]
    assert group_by_destination(addresses, routing) == expected


def test_routing_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match=r"delivery\.mode"):
        Routing.of("carrier-pigeon", [])


# --- fold ------------------------------------------------------------------------------


def test_fold_of_received_is_all_on_the_first_attempt() -> None:
    """MessageReceived is the record of attempt 1: its jobs go out in answer to it alone,
    so each recipient is on one of them, which its first result names."""
    state = fold([received("a@r.test", "b@r.test", "a@r.test")])
    assert state.queue_id == QID
    assert [(r.address, r.status, r.attempt, r.job_id) for r in state.recipients] == [
        ("a@r.test", "scheduled", 1, None),
        ("b@r.test", "scheduled", 1, None),
    ]
    assert state.in_flight and state.max_attempt == 1 and state.jobs == ()
    assert not state.all_final and not state.completed


def test_first_results_name_their_jobs() -> None:
    relay, local = Destination(kind="relay"), Destination(kind="local", domain="example.test")
    history = [
        received("a@r.test", "b@r.test", "c@example.test"),
        result("ok", "Q1.a1.d0", "a@r.test").model_copy(update={"destination": relay}),
        result("ok", "Q1.a1.d1", "c@example.test").model_copy(update={"destination": local}),
        result("defer", "Q1.a1.d0", "b@r.test", 451).model_copy(update={"destination": relay}),
    ]
    state = fold(history)
    assert [(j.job_id, j.attempt, j.destination, j.recipients) for j in state.jobs] == [
        ("Q1.a1.d0", 1, relay, ("a@r.test", "b@r.test")),
        ("Q1.a1.d1", 1, local, ("c@example.test",)),
    ]
    assert [(r.status, r.job_id) for r in state.recipients] == [
        ("delivered", "Q1.a1.d0"),
        ("deferred", "Q1.a1.d0"),
        ("delivered", "Q1.a1.d1"),
    ]
    # the same facts as with the DeliveryScheduled records an older queue wrote
    scheduled = [
        DeliveryScheduled(
            event_id=f"{jid}.scheduled",
            queue_id=QID,
            occurred_at=NOW,
            job_id=jid,
            attempt=1,
            destination=dest,
            recipients=rcpts,
        )
        for jid, dest, rcpts in [
            ("Q1.a1.d0", relay, ("a@r.test", "b@r.test")),
            ("Q1.a1.d1", local, ("c@example.test",)),
        ]
    ]
    old = fold([history[0], *scheduled, *history[1:]])
    assert old.recipients == state.recipients and old.status == state.status
    assert [(j.job_id, j.destination, j.recipients) for j in old.jobs] == [
        (j.job_id, j.destination, j.recipients) for j in state.jobs
    ]


def test_an_old_history_with_its_completion_folds_the_same() -> None:
    history: list[Event] = [received("a@r.test"), result("ok", "Q1.a1.d0", "a@r.test")]
    old = [
        *history,
        MessageCompleted(event_id="Q1.completed", queue_id=QID, delivered=("a@r.test",)),
    ]
    assert fold(history).completed and fold(old) == fold(history)


SCHED = DeliveryScheduled(
    event_id="Q1.a1.d0.scheduled",
    queue_id=QID,
    job_id="Q1.a1.d0",
    attempt=1,
    destination=Destination(kind="relay"),
    recipients=("a@r.test", "b@r.test"),
)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([], {"a@r.test": "scheduled", "b@r.test": "scheduled"}),
        (
            [result("ok", "Q1.a1.d0", "a@r.test")],
            {"a@r.test": "delivered", "b@r.test": "scheduled"},
        ),
        (
            [
                result("fail", "Q1.a1.d0", "a@r.test", 550),
                result("defer", "Q1.a1.d0", "b@r.test", 451),
            ],
            {"a@r.test": "failed", "b@r.test": "deferred"},
        ),
        # first result of a job wins, as JetStream's dedup of the result id does
        (
            [result("defer", "Q1.a1.d0", "a@r.test", 451), result("ok", "Q1.a1.d0", "a@r.test")],
            {"a@r.test": "deferred", "b@r.test": "scheduled"},
        ),
        (
            [result("ok", "Q1.a1.d0", "a@r.test"), result("fail", "Q1.a1.d0", "a@r.test", 550)],
            {"a@r.test": "delivered", "b@r.test": "scheduled"},
        ),
        # unknown job and unknown recipient change nothing
        (
            [result("ok", "Q1.a9.d9", "a@r.test")],
            {"a@r.test": "scheduled", "b@r.test": "scheduled"},
        ),
        (
            [result("ok", "Q1.a1.d0", "z@r.test")],
            {"a@r.test": "scheduled", "b@r.test": "scheduled"},
        ),
    ],
)
def test_fold_results(results: list[Event], expected: dict[str, str]) -> None:
    state = fold([received("a@r.test", "b@r.test"), SCHED, *results])
    assert {r.address: r.status for r in state.recipients} == expected


def test_apply_is_idempotent_for_every_event() -> None:
    history: list[Event] = [
        received("a@r.test", "b@r.test"),
        SCHED,
        result("ok", "Q1.a1.d0", "a@r.test"),
        result("fail", "Q1.a1.d0", "b@r.test", 550),
        MessageCompleted(event_id="Q1.completed", queue_id=QID),
    ]
    once = fold(history)
    twice = fold(history, once)
    assert once == twice
    assert once.completed and once.all_final


def test_apply_ignores_other_messages() -> None:
    state = fold([received("a@r.test")])
    assert apply(state, received("x@r.test", qid="Q2")) == state
    assert apply(state, MessageDelayed(event_id="d", queue_id="Q2", recipients=())) == state


def test_result_records_reply() -> None:
    state = fold(
        [received("a@r.test", "b@r.test"), SCHED, result("fail", "Q1.a1.d0", "a@r.test", 550)]
    )
    rcpt = state.recipient("a@r.test")
    assert rcpt is not None
    assert (rcpt.reply_code, rcpt.reply_status, rcpt.job_id, rcpt.attempt) == (
        550,
        "5.0.0",
        "Q1.a1.d0",
        1,
    )
    assert rcpt.final and rcpt.last_attempt_at == NOW


# --- decide ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing", "recipients", "expected_jobs"),
    [
        (
            RELAY,
            ("a@one.test", "b@two.test", "c@example.test"),
            [
                ("Q1.a1.d0", Destination(kind="relay"), ("a@one.test", "b@two.test")),
                ("Q1.a1.d1", Destination(kind="local", domain="example.test"), ("c@example.test",)),
            ],
        ),
        (
            MX,
            ("a@one.test", "b@two.test", "c@one.test"),
            [
                (
                    "Q1.a1.d0",
                    Destination(kind="mx", domain="one.test"),
                    ("a@one.test", "c@one.test"),
                ),
                ("Q1.a1.d1", Destination(kind="mx", domain="two.test"), ("b@two.test",)),
            ],
        ),
    ],
)
def test_received_schedules_one_job_per_destination(
    routing: Routing,
    recipients: tuple[str, ...],
    expected_jobs: list[tuple[str, Destination, tuple[str, ...]]],
) -> None:
    outputs = decide(MessageState(), received(*recipients), NOW, routing)
    jobs = jobs_of(outputs)
    # the jobs alone (MessageReceived is their record); no timer until someone is deferred
    assert outputs == jobs
    assert [(j.job_id, j.destination, tuple(r.address for r in j.recipients)) for j in jobs] == (
        expected_jobs
    )
    for job in jobs:
        assert job.mail_from == "alice@example.test" and job.attempt == 1
        assert job.size == 42 and job.envid == "ENV1" and job.ret == "HDRS"
        assert job.trace_parent is not None
        assert all(r.notify == ("FAILURE",) for r in job.recipients)


def test_redelivered_received_reemits_same_ids() -> None:
    state, first = run([received("a@r.test", "b@r.test")])
    again = decide(state, received("a@r.test", "b@r.test"), NOW, RELAY)
    assert [getattr(o, "event_id", None) or getattr(o, "job_id", None) for o in again] == [
        getattr(o, "event_id", None) or getattr(o, "job_id", None) for o in first
    ]


def test_received_without_recipients_completes_at_once() -> None:
    outputs = decide(MessageState(), received(), NOW, RELAY)
    assert outputs == [DeleteBody(QID)]
    assert fold([received()]).completed
    # rebuilt, it is completed already: the body still goes
    assert decide(fold([received()]), received(), NOW, RELAY) == [DeleteBody(QID)]


def test_received_after_completion_only_cleans_up() -> None:
    state, _ = run([received("a@r.test"), result("ok", "Q1.a1.d0", "a@r.test")])
    assert state.completed
    assert decide(state, received("a@r.test"), NOW, RELAY) == [DeleteBody(QID)]


@pytest.mark.parametrize(
    ("results", "completed", "delivered", "failed"),
    [
        (
            [("ok", "a@r.test"), ("ok", "b@r.test"), ("ok", "c@r.test")],
            True,
            ("a@r.test", "b@r.test", "c@r.test"),
            (),
        ),
        (
            [("ok", "a@r.test"), ("fail", "b@r.test"), ("fail", "c@r.test")],
            True,
            ("a@r.test",),
            ("b@r.test", "c@r.test"),
        ),
        ([("ok", "a@r.test"), ("fail", "b@r.test"), ("defer", "c@r.test")], False, (), ()),
        ([("ok", "a@r.test"), ("ok", "b@r.test")], False, (), ()),
    ],
)
def test_completion(
    results: list[tuple[str, str]],
    completed: bool,
    delivered: tuple[str, ...],
    failed: tuple[str, ...],
) -> None:
    inputs: list[Event] = [received("a@r.test", "b@r.test", "c@r.test")]
    inputs += [
        result(kind, "Q1.a1.d0", rcpt, 250 if kind == "ok" else 550) for kind, rcpt in results
    ]
    state, outputs = run(inputs)
    # completion is the fold's: no event records it
    assert [o for o in outputs if isinstance(o, MessageCompleted)] == []
    assert state.completed is completed
    if completed:
        assert (state.addresses("delivered"), state.addresses("failed")) == (delivered, failed)
        assert ClearTimers(QID) not in outputs  # never deferred: it never had a timer
        # a failure report is due: the body stays until the notifier has answered
        assert (outputs[-1] == DeleteBody(QID)) is (not failed)
    else:
        assert DeleteBody(QID) not in outputs


def test_completion_waits_for_every_destination() -> None:
    inputs: list[Event] = [
        received("a@one.test", "b@two.test"),
        result("ok", "Q1.a1.d0", "a@one.test"),
    ]
    state, _ = run(inputs, MX)
    assert not state.completed
    state, more = run([*inputs, result("ok", "Q1.a1.d1", "b@two.test")], MX)
    assert state.completed
    assert more.count(DeleteBody(QID)) == 1


@pytest.mark.parametrize(
    "late",
    [
        result("ok", "Q1.a1.d0", "a@r.test"),  # redelivered result of a final recipient
        result("fail", "Q1.a1.d0", "a@r.test", 550),  # a conflicting later result
        result("ok", "Q1.a7.d0", "a@r.test"),  # unknown job
    ],
)
def test_late_results_after_completion_only_clean_up(late: Event) -> None:
    state, _ = run([received("a@r.test"), result("ok", "Q1.a1.d0", "a@r.test")])
    assert state.completed
    # nothing new is published; deleting the body again is harmless
    assert decide(state, late, NOW, RELAY) == [DeleteBody(QID)]
    assert apply(state, late) == state


def test_result_before_completion_for_unknown_job_changes_nothing() -> None:
    state, _ = run([received("a@r.test", "b@r.test")])
    assert decide(state, result("ok", "Q1.a5.d0", "a@r.test"), NOW, RELAY) == []
    assert apply(state, result("ok", "Q1.a5.d0", "a@r.test")) == state


@pytest.mark.parametrize("sender", ["", "alice@example.test"])
def test_state_rebuilt_from_stream_decides_the_same(sender: str) -> None:
    """A rebuilt state already contains the trigger (and so is completed); decide must
    not care: the same reports, and the body goes once they are answered."""
    stream: list[Event] = [
        received("a@r.test", "b@r.test").model_copy(update={"mail_from": sender}),
        result("ok", "Q1.a1.d0", "b@r.test"),
        result("fail", "Q1.a1.d0", "a@r.test", 550),
    ]
    live, _ = run(stream[:-1])
    cached = decide(live, stream[-1], NOW, RELAY)
    rebuilt = fold(stream)
    assert rebuilt.completed
    assert decide(rebuilt, stream[-1], NOW, RELAY) == cached
    # a null sender gets no report, so nothing holds the body back
    expected = ["RecipientsFailed"] if sender else ["DeleteBody"]
    assert [type(o).__name__ for o in cached] == expected


def test_result_for_unknown_message_is_ignored() -> None:
    assert decide(MessageState(), result("ok", "Q1.a1.d0", "a@r.test"), NOW, RELAY) == []


def test_the_consumer_reads_every_input_but_the_queues_own_outputs() -> None:
    # The filter is derived from the transitions table and the output union; this pins
    # what it derives, so a change to either that alters what the queue reads is seen.
    from services.queue.adapters.consumer import INPUT_TYPES

    assert INPUT_TYPES == (
        "MessageReceived",
        "DeliverySucceeded",
        "DeliveryDeferred",
        "DeliveryFailed",
        "DeliveryAttempted",
        "ReportSent",
        "MessageHeld",
        "MessageReleased",
        "MessageDeleted",
    )


def test_a_jobs_results_together_fold_and_decide_as_one_by_one() -> None:
    """One DeliveryAttempted is its recipients' results in the job's order: the same
    state, and the same outputs as the last of the per-recipient inputs gives."""
    first = received("a@r.test", "b@r.test", "c@r.test")
    (job,) = jobs_of(decide(MessageState(), first, NOW, RELAY))
    assert job.one_result  # this queue reads one event per job
    attempted = DeliveryAttempted(
        event_id=f"{job.job_id}.results",
        queue_id=QID,
        occurred_at=NOW,
        job_id=job.job_id,
        attempt=1,
        destination=job.destination,
        results=(
            RecipientResult(recipient="a@r.test", outcome="succeeded", reply_code=250),
            RecipientResult(recipient="b@r.test", outcome="failed", reply_code=550),
            RecipientResult(recipient="c@r.test", outcome="deferred", reply_code=451),
        ),
    )
    each, each_out = run([first, *attempted.per_recipient()])
    together, together_out = run([first, attempted])
    assert together == each
    assert together_out == each_out
    kinds = [type(o).__name__ for o in together_out]
    # the failure report, then the retry and (deferred once) the warning and expiry timers
    assert kinds == ["DeliveryJob", "RecipientsFailed", "SetTimer", "SetTimer", "SetTimer"]
    # rebuilt with it, and again: nothing new
    rebuilt = fold([first, attempted])
    assert decide(rebuilt, attempted, NOW, RELAY) == together_out[1:]
    assert apply(rebuilt, attempted) == rebuilt
