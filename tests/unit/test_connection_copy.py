"""Policy's copy of the ingress instances' connection tables (policy core)."""

from __future__ import annotations

from libs.common.contract.policy import ConnectionReport
from services.policy.core.connections import ConnectionCopy

IP = "192.0.2.7"


def report(
    instance: str, seq: int, counts: dict[str, int], full: bool = False, ttl: float = 30
) -> ConnectionReport:
    return ConnectionReport(instance=instance, seq=seq, ttl=ttl, full=full, counts=counts)


def test_others_leaves_out_the_asking_instance() -> None:
    copy = ConnectionCopy()
    copy.apply(report("a", 1, {IP: 2}, full=True), now=0)
    copy.apply(report("b", 1, {IP: 3, "192.0.2.8": 1}, full=True), now=0)
    assert copy.others(IP, "a", now=1) == 3
    assert copy.others(IP, "b", now=1) == 2
    assert copy.others(IP, None, now=1) == 5
    assert copy.others("192.0.2.9", None, now=1) == 0


def test_a_change_sets_its_addresses_and_a_heartbeat_the_whole_table() -> None:
    copy = ConnectionCopy()
    copy.apply(report("a", 1, {IP: 2, "192.0.2.8": 1}, full=True), now=0)
    copy.apply(report("a", 2, {IP: 0}), now=0)  # the close of both of IP's connections
    assert copy.others(IP, None, now=0) == 0
    assert copy.others("192.0.2.8", None, now=0) == 1
    # A lost close (192.0.2.8's) is repaired by the next heartbeat.
    copy.apply(report("a", 4, {IP: 1}, full=True), now=0)
    assert copy.others("192.0.2.8", None, now=0) == 0
    assert copy.others(IP, None, now=0) == 1


def test_an_older_or_repeated_report_changes_nothing() -> None:
    copy = ConnectionCopy()
    copy.apply(report("a", 5, {IP: 4}, full=True), now=0)
    copy.apply(report("a", 3, {IP: 1}, full=True), now=0)
    copy.apply(report("a", 5, {IP: 0}), now=0)
    assert copy.others(IP, None, now=0) == 4


def test_a_silent_instance_stops_counting_after_its_ttl() -> None:
    copy = ConnectionCopy()
    copy.apply(report("a", 1, {IP: 2}, full=True, ttl=9), now=100)
    copy.apply(report("b", 1, {IP: 1}, full=True, ttl=9), now=100)
    copy.apply(report("b", 2, {IP: 1}, full=True, ttl=9), now=105)  # b's heartbeat
    assert copy.others(IP, None, now=108.9) == 3
    assert copy.others(IP, None, now=109) == 1  # a is gone; b was heard from at 105
    assert copy.instances == 1
    assert copy.others(IP, None, now=114) == 0


def test_a_change_from_an_unknown_instance_says_the_table_is_incomplete() -> None:
    copy = ConnectionCopy()
    assert copy.apply(report("a", 1, {IP: 1}), now=0)  # a delta before any heartbeat
    assert not copy.apply(report("a", 2, {IP: 2}), now=1)
    assert not copy.apply(report("b", 1, {IP: 1}, full=True), now=1)
    # a's TTL ran out while its reports were lost: known no longer.
    assert copy.apply(report("a", 9, {IP: 1}), now=40)
    assert copy.others(IP, None, now=40) == 1  # b expired too; a's one address so far


def test_a_stopping_instance_is_forgotten_at_once() -> None:
    copy = ConnectionCopy()
    copy.apply(report("a", 1, {IP: 2}, full=True), now=0)
    copy.apply(report("a", 2, {}, full=True, ttl=0), now=0)
    assert copy.others(IP, None, now=0) == 0
    assert copy.instances == 0
