"""A continuous pull on a durable consumer: a window of messages kept asked for.

nats-py's `fetch` asks twice whenever the consumer is idle (a no-wait probe that
comes back empty, then a waiting request) and hands a batch over only when the
fetch ends, so a service that handles its inputs one or two at a time paid about
one pull request per input, and an input that arrived during a batch waited for
the whole batch. Here one waiting request asks for up to `window` messages and
stays on the server until it expires; each message is handed to its handler as
it arrives; a new request for the freed room goes out once half the window is
free. Pull requests per input fall to about 2 / window under load and to one
per `expires` when idle.

`PullWindow` is the book-keeping alone (what is asked, what is in hand), so it can
be tested without a server; `pull_loop` is the I/O around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]

# The server's answers that end one request without a message (no heartbeats are
# asked for, so 100 does not come; 409 ends them all and is handled on its own).
_ENDED = {"404", "408"}
# A request the server should have ended by now but did not answer (a reconnect, a
# restarted server that forgot it) is taken as gone this long after it expired.
GRACE_S = 1.0


@dataclass
class _Request:
    remaining: int
    expires_at: float


class PullWindow:
    """How many messages are asked for and in hand; when to ask for more.

    The server fills one consumer's waiting requests oldest first, so each message
    counts against the oldest open request, and a request's end (its expiry, or a
    status answer) is the oldest one's too.
    """

    def __init__(self, window: int, expires_s: float) -> None:
        if window < 1:
            raise ValueError("a pull window holds at least one message")
        self.window = window
        self.expires_s = expires_s
        self._requests: deque[_Request] = deque()
        self.in_hand = 0

    @property
    def asked(self) -> int:
        return sum(r.remaining for r in self._requests)

    def room(self) -> int:
        return self.window - self.in_hand - self.asked

    def ask(self, now: float) -> int:
        """How many to ask for now (0: not yet): once half the window is free, so
        requests go out for several messages each, not one per settled input."""
        room = self.room()
        if room <= 0 or room * 2 < self.window:
            return 0
        self._requests.append(_Request(room, now + self.expires_s))
        return room

    def received(self) -> None:
        """A message arrived: it fills the oldest request and is now in hand."""
        if self._requests:
            head = self._requests[0]
            head.remaining -= 1
            if head.remaining <= 0:
                self._requests.popleft()
        self.in_hand += 1

    def settled(self) -> None:
        self.in_hand = max(0, self.in_hand - 1)

    def ended(self) -> None:
        """The server ended a request without filling it (a status answer)."""
        if self._requests:
            self._requests.popleft()

    def forget_all(self) -> None:
        """Nothing asked any more (the consumer moved, the connection came back)."""
        self._requests.clear()

    def expire(self, now: float) -> None:
        """Drop requests past their expiry the server did not answer for."""
        while self._requests and self._requests[0].expires_at + GRACE_S < now:
            self._requests.popleft()

    def next_deadline(self, now: float) -> float:
        """Seconds until the oldest request should be over, or until the next look."""
        if not self._requests:
            return self.expires_s
        return max(0.0, self._requests[0].expires_at + GRACE_S - now)


async def pull_loop(
    sub: JetStreamContext.PullSubscription,
    handle: Handler,
    stopping: asyncio.Event,
    window: int,
    expires_s: float,
    what: str,
) -> None:
    """Hand each message of the consumer to `handle` as it arrives, at most `window`
    at a time, until `stopping` is set; then wait for the ones in hand and give
    back (nak) those that arrived too late to start."""
    # The subscription's inbox and pull subject: the ones nats-py's own fetch uses
    # (pinned nats-py), so a service's permissions cover them already.
    inbox: str = sub._deliver
    next_subject: str = sub._nms
    messages = sub._sub
    nc = sub._nc
    loop = asyncio.get_running_loop()
    book = PullWindow(window, expires_s)
    running: set[asyncio.Future[None]] = set()
    freed = asyncio.Event()  # a handler finished: there may be room to ask for
    stop = asyncio.ensure_future(stopping.wait())
    get: asyncio.Future[Msg] | None = None

    def done(task: asyncio.Future[None]) -> None:
        running.discard(task)
        book.settled()
        freed.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s: input not settled: %s: %s", what, type(exc).__name__, exc)

    try:
        while not stopping.is_set():
            now = loop.time()
            book.expire(now)
            count = book.ask(now)
            if count:
                request = {"batch": count, "expires": int(expires_s * 1_000_000_000)}
                try:
                    await nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
                except Exception as exc:  # reconnecting: the request never left
                    book.forget_all()
                    log.warning("%s: pull request failed: %s: %s", what, type(exc).__name__, exc)
                    await _pause(stopping, 1.0)
                    continue
            if get is None:
                get = asyncio.ensure_future(messages.next_msg(timeout=None))
            freed.clear()
            wake = asyncio.ensure_future(freed.wait())
            waiting: set[asyncio.Future[Any]] = {get, stop, wake}
            await asyncio.wait(
                waiting,
                timeout=max(book.next_deadline(loop.time()), 0.05),
                return_when=asyncio.FIRST_COMPLETED,
            )
            wake.cancel()
            if not get.done():
                continue  # room freed, a request due to expire, or the stop
            arrived, get = get, None
            try:
                msg = arrived.result()
            except Exception as exc:  # the subscription closed under us
                if stopping.is_set():
                    break
                log.warning("%s: pull failed: %s: %s", what, type(exc).__name__, exc)
                book.forget_all()
                await _pause(stopping, 1.0)
                continue
            status = JetStreamContext.is_status_msg(msg)
            if status:
                if status == "409":
                    # A leadership change, the consumer deleted, too many waiting
                    # requests: whatever was asked is gone; ask again after a pause.
                    book.forget_all()
                    log.info("%s: pull ended: %s", what, (msg.headers or {}).get("Description"))
                    await _pause(stopping, 0.5)
                elif status in _ENDED:
                    book.ended()
                continue
            book.received()
            task = asyncio.ensure_future(handle(msg))
            running.add(task)
            task.add_done_callback(done)
    finally:
        stop.cancel()
        if get is not None:
            get.cancel()
            with contextlib.suppress(BaseException):
                leftover = await get
                if not JetStreamContext.is_status_msg(leftover):
                    await _give_back(leftover)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        # What the server delivered after the stop goes back at once, not after ack_wait.
        while True:
            try:
                msg = messages._pending_queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if not JetStreamContext.is_status_msg(msg):
                await _give_back(msg)


async def _give_back(msg: Msg) -> None:
    try:
        await msg.nak()
    except Exception as exc:  # ack_wait brings it back anyway
        log.debug("pull: nak failed: %s", exc)


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        pass
