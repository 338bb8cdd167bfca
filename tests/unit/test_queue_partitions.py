"""The queue's partitions: which one a message is in, and how replicas share them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from libs.common.contract import subjects
from libs.common.contract.ids import new_queue_id
from services.queue.adapters import shares

P = subjects.QUEUE_PARTITIONS
names = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20, unique=True)


def test_a_partition_is_a_fixed_function_of_the_queue_id() -> None:
    # FNV-1a's published 32-bit values modulo 16: every publisher, of every version from
    # now on, must agree on them (Python's salted hash() differs in each process).
    vectors = {"": 0x811C9DC5, "a": 0xE40C292C, "foobar": 0xBF9CF968}
    for text, fnv in vectors.items():
        assert subjects.partition_of(text) == fnv % P


def test_queue_ids_spread_over_every_partition() -> None:
    counts = [0] * P
    for _ in range(3_200):
        counts[subjects.partition_of(new_queue_id())] += 1
    assert min(counts) > 3_200 / P / 2  # no partition starved, none doubled


def test_subjects_carry_the_partition_last_and_one_filter_reads_both_shapes() -> None:
    qid = "01JQ0000000000000000000000"
    p = subjects.partition_of(qid)
    assert (
        subjects.event_subject(qid, "MessageReceived") == f"mailbus.evt.{qid}.MessageReceived.{p}"
    )
    assert subjects.timer_fire_subject(qid, "retry") == f"mailbus.timer.fire.{qid}.retry.{p}"
    assert subjects.events_of_type("DeliveryFailed", 3) == "mailbus.evt.*.DeliveryFailed.3"
    # `mailbus.evt.<qid>.>` covers the old shape (no partition) and the new one.
    assert subjects.message_events_filter(qid) == f"mailbus.evt.{qid}.>"
    assert subjects.message_timers_filter(qid) == f"mailbus.timer.*.{qid}.>"
    # An epoch marker is no message's event: one token short of the new shape, and its
    # third token is no event type of the old shape.
    epoch = subjects.queue_epoch_subject(7)
    assert epoch == "mailbus.evt.queue-epoch.7" and len(epoch.split(".")) == 4


@given(names, st.integers(min_value=1, max_value=64))
def test_targets_add_up_to_every_partition_and_differ_by_one_at_most(
    members: list[str], partitions: int
) -> None:
    targets = [shares.target(members, m, partitions) for m in members]
    assert sum(targets) == partitions
    assert max(targets) - min(targets) <= 1


def test_a_replica_that_sees_no_member_list_yet_targets_everything() -> None:
    assert shares.target([], "me", P) == P
    assert shares.target(["other"], "me", P) == P // 2


@given(st.text(min_size=1, max_size=20), st.integers(min_value=1, max_value=64))
def test_the_order_of_preference_tries_each_partition_once(me: str, partitions: int) -> None:
    assert sorted(shares.preference(me, partitions)) == list(range(partitions))


def test_below_target_it_takes_the_difference_at_once() -> None:
    assert shares.plan({1, 2}, want=5, rounds_above=0) == shares.Plan(take=3)
    assert shares.plan(set(), want=16, rounds_above=0) == shares.Plan(take=16)


def test_above_target_it_gives_back_only_after_some_rounds_and_partition_0_last() -> None:
    owned = {0, 3, 9, 12}
    for rounds in range(shares.RELEASE_PATIENCE):
        assert shares.plan(owned, want=2, rounds_above=rounds) == shares.Plan()
    assert shares.plan(owned, want=2, rounds_above=shares.RELEASE_PATIENCE) == shares.Plan(
        release=(12, 9)
    )
    assert shares.plan({0, 5}, want=0, rounds_above=9).release == (5, 0)


def test_at_target_nothing_moves() -> None:
    assert shares.plan({4, 5, 6}, want=3, rounds_above=0) == shares.Plan()


@given(names, st.data())
def test_replicas_following_the_plan_converge_to_every_partition_owned_once(
    members: list[str], data: st.DataObject
) -> None:
    """Rounds of every replica in turn, from any starting split: all partitions end up
    owned, each by exactly one member, each member at its target."""
    owned: dict[str, set[int]] = {m: set() for m in members}
    free = set(range(P))
    for m in members:  # some arbitrary start: a few partitions already held
        grab = data.draw(st.sets(st.sampled_from(sorted(free))) if free else st.just(set()))
        owned[m] |= grab
        free -= grab
    above = dict.fromkeys(members, 0)
    for _ in range(shares.RELEASE_PATIENCE + 4):
        for m in members:
            want = shares.target(members, m, P)
            above[m] = above[m] + 1 if len(owned[m]) > want else 0
            step = shares.plan(owned[m], want, above[m])
            for p in step.release:
                owned[m].discard(p)
                free.add(p)
            for p in [p for p in shares.preference(m, P) if p in free][: step.take]:
                owned[m].add(p)
                free.discard(p)
    assert not free
    assert sum(len(o) for o in owned.values()) == P
    assert all(len(owned[m]) == shares.target(members, m, P) for m in members)
