"""The mail log's lines and its two formats, without any service."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from libs.common.contract.events import (
    Client,
    DeliveryAttempted,
    DeliveryDeferred,
    DeliverySucceeded,
    DeliveryTimings,
    MessageReceived,
    Recipient,
    RecipientResult,
)
from libs.common.mail import maillines
from libs.common.runtime import maillog
from ops.up import Backoff


def test_client_text_cannot_break_a_line_or_a_field() -> None:
    line = maillines.rejected(
        "rcpt",
        "192.0.2.7",
        "554 5.7.1 Relay access denied",
        "a>b@x.test\r\nDec  1 00:00:00 h mailbus/smtpd[1]: fake",
        "to, me@x.test",
        "héllo <x>",
    )
    assert "\n" not in line.text and "\r" not in line.text
    assert "from=<a\\x3eb@x.test\\x0d\\x0aDec\\x20" in line.text, line.text
    assert "to=<to\\x2c\\x20me@x.test>" in line.text
    assert "helo=<h\\xe9llo\\x20\\x3cx\\x3e>" in line.text
    assert line.fields["helo"] == "héllo <x>"  # raw: JSON escapes it itself
    assert maillines.esc("ok\\") == "ok\\x5c"
    assert maillines.esc("\u20ac\U0001f600") == "\\u20ac\\U0001f600"


def test_a_deferral_has_postfix_shape() -> None:
    arrival = datetime(2026, 1, 1, tzinfo=UTC)
    event = DeliveryDeferred(
        event_id="e",
        queue_id="QID",
        occurred_at=arrival + timedelta(seconds=3601),
        job_id="j",
        attempt=2,
        recipient="carol@remote.test",
        remote_host="mx.remote.test[192.0.2.5]",
        reply_text="connect to mx.remote.test[192.0.2.5]:25: Connection refused",
        status="4.4.1",
    )
    assert maillines.delivery(event, arrival).text == (
        "QID: to=<carol@remote.test>, relay=mx.remote.test[192.0.2.5], delay=3601, "
        "dsn=4.4.1, status=deferred (connect to mx.remote.test[192.0.2.5]:25: "
        "Connection refused)"
    )


def test_a_delivery_line_has_postfix_delays() -> None:
    """a: arrival to the first job; b: waiting in the queue (the retry pause too);
    c: connection setup; d: transmission. They add up to delay=."""
    arrival = datetime(2026, 1, 1, tzinfo=UTC)
    event = DeliverySucceeded(
        event_id="e",
        queue_id="QID",
        occurred_at=arrival + timedelta(seconds=61.2),
        job_id="j",
        attempt=2,
        recipient="bob@remote.test",
        remote_host="mx.remote.test[192.0.2.5]:25",
        reply_code=250,
        reply_text="2.0.0 Ok: queued as ABC",
        status="2.0.0",
        timings=DeliveryTimings(
            scheduled_at=arrival + timedelta(seconds=60.5), setup_s=0.42, transfer_s=0.2
        ),
    )
    first = arrival + timedelta(seconds=0.1)
    line = maillines.delivery(event, arrival, first)
    assert line.text == (
        "QID: to=<bob@remote.test>, relay=mx.remote.test[192.0.2.5]:25, delay=61, "
        "delays=0.1/60/0.42/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as ABC)"
    )
    assert line.fields["delays"] == [0.1, 60.48, 0.42, 0.2]
    # The first attempt: its own job is the first; a phase under 10 ms is 0.
    quick = event.model_copy(
        update={
            "occurred_at": arrival + timedelta(seconds=0.5),
            "timings": DeliveryTimings(scheduled_at=arrival, setup_s=0.005, transfer_s=0.3),
        }
    )
    assert "delay=0.5, delays=0/0.2/0/0.3, dsn=" in maillines.delivery(quick, arrival).text
    # A result from before timings were recorded has no delays=.
    old = event.model_copy(update={"timings": None})
    assert "delays=" not in maillines.delivery(old, arrival).text
    assert maillines.delivery(old, arrival).fields["delays"] is None


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """maillog.setup replaces the root logger's handlers: give pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("mail.log", "nats", "aiosmtpd")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


def _capture(fmt: str, level: str = "info") -> io.StringIO:
    maillog.setup(level, fmt, "ingress")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return stream


def test_text_and_json_formats_carry_the_same_line() -> None:
    received = MessageReceived(
        event_id="QID.received",
        queue_id="QID",
        mail_from="alice@example.test",
        recipients=(Recipient(address="bob@remote.test"),),
        size=2345,
        client=Client(ip="192.0.2.1"),
    )
    stream = _capture("text")
    maillog.emit(maillines.queued(received))
    logging.getLogger("services.x").warning("bad\nthing")
    text = stream.getvalue().splitlines()
    assert text[0].endswith(
        "]: QID: from=<alice@example.test>, size=2345, nrcpt=1 (queue active)"
    ), text
    assert " mailbus/qmgr[" in text[0]
    assert " mailbus/ingress[" in text[1] and text[1].endswith(": warning: bad\\nthing"), text

    stream = _capture("json")
    maillog.emit(maillines.queued(received))
    record = json.loads(stream.getvalue())
    assert record["program"] == "mailbus/qmgr" and record["queue_id"] == "QID"
    assert record["from"] == "alice@example.test" and record["size"] == 2345
    assert record["message"] == text[0].split("]: ", 1)[1]


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_library_chatter_only_at_debug(level: str, shown: bool) -> None:
    stream = _capture("text", level)
    logging.getLogger("mail.log").info("aiosmtpd says hello")
    assert ("aiosmtpd says hello" in stream.getvalue()) is shown
    logging.getLogger("mail.log").warning("aiosmtpd warns")
    assert "warning: aiosmtpd warns" in stream.getvalue()


def test_back_off_grows_then_gives_up_and_forgets_after_a_stable_run() -> None:
    backoff = Backoff(pauses=(1, 2, 4), stable_s=3600)
    assert [backoff.died() for _ in range(4)] == [1, 2, 4, None]
    stable = Backoff(pauses=(1, 2), stable_s=0)  # every run counts as stable
    assert [stable.died() for _ in range(4)] == [1, 1, 1, 1]


def test_removed_follows_the_decision_that_completed_the_message() -> None:
    """No event marks a completion, so the queue says which decision made it."""
    fired = object()  # an input without a line of its own
    lines = list(maillines.queue_lines(fired, [], None, completed="Q9"))
    assert [(line.text, line.fields["event"]) for line in lines] == [("Q9: removed", "removed")]
    assert list(maillines.queue_lines(fired, [], None)) == []


def test_a_jobs_results_log_one_line_per_recipient() -> None:
    attempted = DeliveryAttempted(
        event_id="Q9.a1.d0.results",
        queue_id="Q9",
        job_id="Q9.a1.d0",
        attempt=1,
        remote_host="mx.remote.test",
        results=(
            RecipientResult(recipient="a@r.test", outcome="succeeded", reply_code=250),
            RecipientResult(recipient="b@r.test", outcome="deferred", reply_code=451),
        ),
    )
    lines = list(maillines.queue_lines(attempted, [], None))
    assert [(line.fields["to"], line.fields["status"]) for line in lines] == [
        ("a@r.test", "sent"),
        ("b@r.test", "deferred"),
    ]
