"""Durable pull consumers: one way to declare, bind and drain them for every service.

Each service names its consumer (stream, filters, ack_wait, max_ack_pending) in a
`DurableConsumer`; `bind` creates or updates it on the server and binds to it, and
`fetch_loop` hands batches to the service's handler until a stop event is set. The
handler settles each message itself (ack, nak, term): what a message caused must be
durable before it is acked, and only the handler knows what that is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from libs.common.runtime import pull

log = logging.getLogger(__name__)

Handler = pull.Handler


@dataclass(frozen=True)
class DurableConsumer:
    stream: str
    name: str
    description: str
    filters: tuple[str, ...]
    ack_wait: float  # seconds an unacked message stays with its fetcher
    # None leaves the server's default (1000 unacked messages per consumer).
    max_ack_pending: int | None = None

    def config(self) -> api.ConsumerConfig:
        # One filter goes in filter_subject, which also names it in the create request's
        # subject, so a permission can be scoped to it.
        single = self.filters[0] if len(self.filters) == 1 else None
        return api.ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=self.description,
            filter_subject=single,
            filter_subjects=None if single is not None else list(self.filters),
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
        )


async def bind(
    js: JetStreamContext, consumer: DurableConsumer
) -> JetStreamContext.PullSubscription:
    """Create or update the consumer, then bind to it. Updating at every start is what
    makes a changed filter or limit in a new version take effect; replicas that bind
    the same durable share its messages."""
    await js.add_consumer(consumer.stream, consumer.config())
    return await js.pull_subscribe_bind(durable=consumer.name, stream=consumer.stream)


@dataclass(frozen=True)
class FetchSettings:
    batch: int
    timeout: float = 1.0  # seconds a fetch waits; also the pause after a failed one
    # Handle a batch's messages together (handlers serialize what must be serialized)
    # or one after the other.
    concurrent: bool = True
    # Cancel a fetch that is only waiting when the stop comes, instead of letting it run
    # out. A message that arrives just then stays unacked until ack_wait brings it back.
    # (One-by-one handlers only: the continuous pull ends at a stop anyway.)
    cancel_idle_fetch: bool = False
    # With `concurrent`: keep a window of `batch` messages asked for and hand each one
    # over as it arrives (pull.py), rather than fetch, handle the batch, fetch again.
    continuous: bool = True


async def fetch_loop(
    sub: JetStreamContext.PullSubscription,
    handle: Handler,
    stopping: asyncio.Event,
    settings: FetchSettings,
    what: str,
) -> None:
    """Fetch a batch, handle all of it, repeat until `stopping` is set.

    A batch is finished before the loop looks at `stopping` again, so a stop never
    abandons work in hand; an idle fetch makes a stop wait at most `settings.timeout`.
    Concurrent handlers get the continuous pull instead (same promise: the handlers
    in hand finish before it returns).
    """
    if settings.concurrent and settings.continuous:
        await pull.pull_loop(sub, handle, stopping, settings.batch, settings.timeout, what)
        return
    while not stopping.is_set():
        try:
            msgs = await _fetch(sub, stopping, settings)
        except TimeoutError:  # nats.errors.TimeoutError included: nothing to fetch
            continue
        except Exception as exc:  # NATS reconnecting, consumer being recreated, ...
            if stopping.is_set():
                break
            log.warning("%s: fetch failed: %s: %s", what, type(exc).__name__, exc)
            await asyncio.sleep(settings.timeout)
            continue
        if msgs is None:
            break
        if settings.concurrent:
            outcomes = await asyncio.gather(*(handle(m) for m in msgs), return_exceptions=True)
        else:
            outcomes = [await _settle(handle, m) for m in msgs]
        for outcome in outcomes:
            # Only an ack or nak that could not reach NATS gets here: redelivery covers it.
            if isinstance(outcome, Exception):
                log.warning("%s: input not settled: %s: %s", what, type(outcome).__name__, outcome)


async def _fetch(
    sub: JetStreamContext.PullSubscription, stopping: asyncio.Event, settings: FetchSettings
) -> list[Msg] | None:
    """The next batch, or None when the stop cancelled an idle fetch."""
    if not settings.cancel_idle_fetch:
        return await sub.fetch(settings.batch, timeout=settings.timeout)
    fetch = asyncio.create_task(sub.fetch(settings.batch, timeout=settings.timeout))
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        fetch.cancel()
        raise
    finally:
        stop.cancel()
    if fetch.done():
        return fetch.result()
    fetch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fetch
    return None


async def _settle(handle: Handler, msg: Msg) -> BaseException | None:
    try:
        await handle(msg)
    except Exception as exc:
        return exc
    return None
