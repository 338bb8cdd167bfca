"""`mailbus queue show` names the message's trace, so an operator can open it."""

from __future__ import annotations

from ops.queuectl import format_history, trace_id

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_id_comes_from_the_sessions_traceparent() -> None:
    events = [
        {"type": "DeliveryScheduled", "trace_parent": "ignored"},
        {"type": "MessageReceived", "trace_parent": PARENT},
    ]
    assert trace_id(events) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id([{"type": "MessageReceived", "trace_parent": None}]) is None


def received(**extra: object) -> dict[str, object]:
    return {
        "type": "MessageReceived",
        "occurred_at": "2026-11-28T03:30:00Z",
        "mail_from": "a@x.test",
        "recipients": [{"address": "b@y.test"}],
        "size": 10,
        "client": {"ip": "192.0.2.1"},
        **extra,
    }


def test_show_prints_the_trace_id() -> None:
    reply = {"queue_id": "Q1", "entry": None, "events": [received(trace_parent=PARENT)]}
    text = format_history(reply)
    assert "trace id: 0af7651916cd43dd8448eb211c80319c" in text
    assert "from <a@x.test> to b@y.test" in text


def test_show_prints_the_antispam_results() -> None:
    spf = {
        "result": "softfail",
        "identity": "mailfrom",
        "sender": "a@x.test",
        "domain": "x.test",
        "client_ip": "192.0.2.1",
    }
    spam = {"result": "spam", "score": 6.5, "tag_score": 5.0}
    event = received(antispam={"spf": spf, "spam": spam})
    text = format_history({"queue_id": "Q1", "entry": None, "events": [event]})
    assert "client 192.0.2.1, antispam spf=softfail spam=spam(6.5)" in text
