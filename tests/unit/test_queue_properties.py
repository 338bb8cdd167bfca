"""What the queue core must keep, whatever order its inputs come in (Hypothesis).

Each example plays one message the way the queue sees it: a MessageReceived with a
few recipients, then results for the jobs it scheduled, in any order, with fired
timers (on time, early or stale), the operator's hold, release, retry and delete,
the notifier's answers, and redeliveries of any of these. The inputs are drawn
from what the state allows at that point, as the bus would deliver them: results
only for jobs that were scheduled, each (job, recipient) with one result event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.contract.events import (
    Client,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliverySucceeded,
    Event,
    MessageCompleted,
    MessageDeleted,
    MessageHeld,
    MessageReceived,
    MessageReleased,
    Recipient,
    ReportSent,
)
from services.queue.core import (
    ClearTimers,
    MessageState,
    Output,
    Routing,
    SetTimer,
    TimerFired,
    Trigger,
    apply,
    apply_outputs,
    decide,
    fold,
)
from services.queue.core.transitions import (
    DONE,
    FINAL,
    MESSAGE,
    Input,
    MessageStatus,
    RecipientStatus,
    message_step,
)
from tests.unit.test_queue_timers import QID, T0, TIMING  # the timer tests' clock

ROUTING = Routing.of("mx", ["example.test"])
ADDRESSES = ("a@one.test", "b@one.test", "c@two.test", "d@example.test", "postmaster")
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI fails for a reason, not by luck
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Result = DeliverySucceeded | DeliveryDeferred | DeliveryFailed
RESULTS: dict[str, tuple[type[Result], int, tuple[str, ...]]] = {
    "ok": (DeliverySucceeded, 250, ("2.0.0", "2.6.0")),
    "defer": (DeliveryDeferred, 451, ("4.4.1", "4.2.2", "4.7.1", "")),
    "fail": (DeliveryFailed, 550, ("5.1.1", "5.7.1")),
}


@dataclass(frozen=True)
class Step:
    before: MessageState
    now: datetime
    trigger: Trigger
    published: frozenset[str]


@dataclass
class Run:
    """The adapter's loop without I/O: its cached state, the stream it sees, its outputs."""

    state: MessageState = field(default_factory=MessageState)
    now: datetime = T0
    stream: list[Event] = field(default_factory=list)
    inputs: list[Trigger] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    timers: dict[str, datetime] = field(default_factory=dict)
    # Each input with the state before it, and the ids in the stream after it.
    steps: list[Step] = field(default_factory=list)
    commands: int = 0
    # How often the state went from not completed to completed (the fold says it; no
    # event does, but for a null sender's expiry).
    completed: int = 0

    def feed(self, trigger: Trigger) -> list[Output]:
        before = self.state
        self.inputs.append(trigger)
        if isinstance(trigger, Event):
            self._publish(trigger)
        elif self.timers.get(trigger.kind) == trigger.due:
            del self.timers[trigger.kind]  # a fired schedule is gone
        outputs = decide(before, trigger, self.now, ROUTING, TIMING)
        after = apply(before, trigger) if isinstance(trigger, Event) else before
        self.state = apply_outputs(after, outputs)
        if self.state.completed and not before.completed:
            self.completed += 1
        for output in outputs:
            if isinstance(output, Event):
                self._publish(output)
            elif isinstance(output, SetTimer):
                self.timers[output.kind] = output.due
            elif isinstance(output, ClearTimers):
                self.timers.clear()
        self.outputs.extend(outputs)
        jobs = [o for o in self.outputs if isinstance(o, DeliveryJob)]
        self.steps.append(Step(before, self.now, trigger, frozenset(ids([*self.stream, *jobs]))))
        return outputs

    def _publish(self, event: Event) -> None:
        # Nats-Msg-Id dedup: an id already in the stream is not stored again.
        if all(e.event_id != event.event_id for e in self.stream):
            self.stream.append(event)

    def completions(self) -> list[MessageCompleted]:
        return [o for o in self.outputs if isinstance(o, MessageCompleted)]

    def jobs(self) -> list[DeliveryJob]:
        """Every job published so far, once: what the workers answer."""
        found: dict[str, DeliveryJob] = {}
        for o in self.outputs:
            if isinstance(o, DeliveryJob):
                found.setdefault(o.job_id, o)
        return list(found.values())


@st.composite
def received(draw: st.DrawFn) -> MessageReceived:
    addresses = draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4))
    notify = st.sampled_from([(), ("FAILURE",), ("SUCCESS", "FAILURE"), ("DELAY",), ("NEVER",)])
    sender = draw(st.sampled_from(["alice@example.test", ""]))
    return MessageReceived(
        event_id=f"{QID}.received",
        queue_id=QID,
        occurred_at=T0,
        mail_from=sender,
        recipients=tuple(Recipient(address=a, notify=draw(notify)) for a in addresses),
        size=42,
        client=Client(ip="127.0.0.1"),
        report_of=draw(st.sampled_from([None, "Q0"])) if not sender else None,
    )


def result(run: Run, data: st.DataObject, kinds: tuple[str, ...]) -> Result | None:
    """The result of a job for one of its recipients that has none yet, if any."""
    seen = {e.event_id for e in run.stream}
    open_results = [
        (job, rcpt.address)
        for job in run.jobs()
        for rcpt in job.recipients
        if f"{job.job_id}.{rcpt.address}" not in seen
    ]
    if not open_results:
        return None
    job, address = data.draw(st.sampled_from(open_results))
    kind = data.draw(st.sampled_from(kinds))
    cls, code, statuses = RESULTS[kind]
    status = data.draw(st.sampled_from(statuses))
    return cls.model_validate(
        {
            "event_id": f"{job.job_id}.{address}",
            "queue_id": QID,
            "occurred_at": run.now,
            "job_id": job.job_id,
            "attempt": job.attempt,
            "recipient": address,
            "remote_host": "mx.remote.test",
            "reply_code": code,
            "reply_text": f"{status} said the server",
            "status": status,
            "destination": job.destination.model_dump(),
            **({"remote_dsn": data.draw(st.booleans())} if kind == "ok" else {}),
        }
    )


def timer(run: Run, data: st.DataObject) -> TimerFired:
    """A pending timer at its time, or a fire that is early, stale or forced."""
    if bool(run.timers) and data.draw(st.booleans()):
        kind, due = data.draw(st.sampled_from(sorted(run.timers.items())))
        run.now = max(run.now, due)
    else:
        kind = data.draw(st.sampled_from(["retry", "warn", "expire"]))
        due = run.now + timedelta(minutes=data.draw(st.integers(-30, 30)))
    forced = kind == "retry" and data.draw(st.booleans())
    return TimerFired.model_validate({"queue_id": QID, "kind": kind, "due": due, "forced": forced})


def command(run: Run) -> Event | None:
    """What `mailbus queue hold|release|delete` may publish for the message as it is."""
    run.commands += 1
    if run.state.done:
        return None
    if run.state.held:
        return MessageReleased(event_id=f"{QID}.released.{run.commands}", queue_id=QID)
    return MessageHeld(event_id=f"{QID}.held.{run.commands}", queue_id=QID)


def answer(run: Run, data: st.DataObject) -> Event | None:
    waiting = [r for r in run.state.reports if r not in run.state.answered]
    if not waiting:
        return None
    trigger = data.draw(st.sampled_from(waiting))
    return ReportSent(
        event_id=f"{trigger}.report", queue_id=QID, trigger_event_id=trigger, kind="failure"
    )


def play(data: st.DataObject, steps: int = 14, delete: bool = True) -> Run:
    run = Run()
    run.feed(data.draw(received()))
    kinds = ("result", "result", "result", "timer", "command", "answer", "again", "delete")
    for _ in range(data.draw(st.integers(0, steps))):
        run.now += timedelta(minutes=data.draw(st.sampled_from([0, 0.5, 3, 11, 65, 185])))
        kind = data.draw(st.sampled_from(kinds if delete else kinds[:-1]))
        trigger: Trigger | None
        if kind == "result":
            trigger = result(run, data, ("ok", "defer", "fail"))
        elif kind == "timer":
            trigger = timer(run, data)
        elif kind == "command":
            trigger = command(run)
        elif kind == "answer":
            trigger = answer(run, data)
        elif kind == "again":
            trigger = data.draw(st.sampled_from(run.inputs))
        elif not run.state.done:  # api.py deletes only what is in the queue
            waiting = tuple(r.address for r in run.state.recipients if not r.final)
            trigger = MessageDeleted(event_id=f"{QID}.deleted", queue_id=QID, recipients=waiting)
        else:
            trigger = None
        if trigger is not None:
            run.feed(trigger)
    return run


def drain(run: Run, data: st.DataObject) -> None:
    """Let the message finish: release it, answer every job, retry the deferred at once."""
    for _ in range(40):
        if run.state.done:
            return
        if run.state.held:
            run.feed(MessageReleased(event_id=f"{QID}.released.end", queue_id=QID))
        elif (event := result(run, data, ("ok", "fail"))) is not None:
            run.feed(event)
        else:
            run.feed(TimerFired(queue_id=QID, kind="retry", due=run.now, forced=True))
    raise AssertionError(f"the message never finished: {run.state}")


def ids(outputs: Sequence[Output | Event]) -> set[str]:
    """The event ids among outputs, and the job ids (a job is published with its id too)."""
    return {
        o.event_id if isinstance(o, Event) else o.job_id
        for o in outputs
        if isinstance(o, Event | DeliveryJob)
    }


# --- the properties ---------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_deciding_an_input_again_decides_the_same(data: st.DataObject) -> None:
    """A state rebuilt from the stream already holds its input: decide must not care. And
    once processed, a redelivered input publishes nothing that was not published before."""
    run = play(data)
    for step, after in zip(run.steps, [s.before for s in run.steps[1:]] + [run.state], strict=True):
        before, now, trigger = step.before, step.now, step.trigger
        first = decide(before, trigger, now, ROUTING, TIMING)
        assert decide(before, trigger, now, ROUTING, TIMING) == first  # no clock, no chance
        if isinstance(trigger, Event):
            assert decide(apply(before, trigger), trigger, now, ROUTING, TIMING) == first
        again = decide(after, trigger, now, ROUTING, TIMING)
        assert ids(again) <= step.published, (trigger, again)


@SETTINGS
@given(st.data())
def test_fold_is_the_state_applied_one_by_one(data: st.DataObject) -> None:
    """The cached state is the fold of the stream, from any cut of it (a cache warmed at
    start, then kept), and an event already in the log changes nothing when seen again."""
    run = play(data)
    assert fold(run.stream) == run.state
    cut = data.draw(st.integers(0, len(run.stream)))
    assert fold(run.stream[cut:], fold(run.stream[:cut])) == run.state
    for end in range(len(run.stream) + 1):
        state = fold(run.stream[:end])
        for seen in run.stream[:end]:
            assert apply(state, seen) == state, (seen, end)


@SETTINGS
@given(st.data())
def test_any_order_of_results_completes_once(data: st.DataObject) -> None:
    run = play(data, delete=False)
    drain(run, data)
    assert run.completed == 1
    state = run.state
    recipients = tuple(r.address for r in state.recipients)
    assert sorted(state.addresses("delivered") + state.addresses("failed")) == sorted(recipients)
    assert state.completed and all(r.final for r in state.recipients)
    # A MessageCompleted only records a null sender's expiry (nothing else would).
    for done in run.completions():
        assert run.state.received is not None and run.state.received.mail_from == ""
        assert done.expired
    # nothing after the end completes it again
    for trigger in data.draw(st.lists(st.sampled_from(run.inputs), max_size=5)):
        run.feed(trigger)
    assert run.completed == 1 and len(run.completions()) <= 1


@SETTINGS
@given(st.data())
def test_a_deleted_message_completes_at_most_once(data: st.DataObject) -> None:
    run = play(data)
    if not run.state.done:
        run.feed(MessageDeleted(event_id=f"{QID}.deleted", queue_id=QID))
    drain(run, data)
    assert run.completed <= 1 and len(run.completions()) <= 1
    assert run.state.done


@SETTINGS
@given(
    st.lists(st.sampled_from(["ok", "fail"]), min_size=4, max_size=4),
    st.permutations(range(8)),
)
def test_results_of_every_job_in_any_order_complete_once(
    kinds: list[str], order: list[int]
) -> None:
    """Four recipients on three destinations, every result delivered twice, in any order."""
    run = Run()
    addresses = ADDRESSES[:4]
    run.feed(
        MessageReceived(
            event_id=f"{QID}.received",
            queue_id=QID,
            occurred_at=T0,
            mail_from="alice@example.test",
            recipients=tuple(Recipient(address=a) for a in addresses),
            size=42,
            client=Client(ip="127.0.0.1"),
        )
    )
    jobs = {r.address: j.job_id for j in run.jobs() for r in j.recipients}
    results = [
        RESULTS[kind][0](
            event_id=f"{jobs[address]}.{address}",
            queue_id=QID,
            job_id=jobs[address],
            attempt=1,
            recipient=address,
        )
        for kind, address in zip(kinds, addresses, strict=True)
    ]
    for index in order:
        run.feed([*results, *results][index])
    assert run.completed == 1 and run.completions() == []
    outcomes = list(zip(kinds, addresses, strict=True))
    assert run.state.addresses("delivered") == tuple(a for k, a in outcomes if k == "ok")
    assert run.state.addresses("failed") == tuple(a for k, a in outcomes if k == "fail")


# --- the table itself -------------------------------------------------------------------


def test_every_status_has_a_row_and_only_the_ends_are_done() -> None:
    assert set(MESSAGE) == set(MessageStatus)
    assert DONE == {MessageStatus.COMPLETED, MessageStatus.DELETED}
    assert FINAL == {RecipientStatus.DELIVERED, RecipientStatus.FAILED}


def test_an_input_already_applied_leads_to_the_same_action() -> None:
    """decide looks the action up before applying, on a state that may hold the input."""
    again = {Input.HELD: Input.HELD_AGAIN, Input.RELEASED: Input.RELEASED_AGAIN}
    for status in MessageStatus:
        for on in Input:
            step = message_step(status, on)
            assert message_step(step.next, again.get(on, on)).action is step.action, (status, on)
