"""The queue's pure core: the message aggregate, routing, timers and the decision function."""

from services.queue.core.aggregate import MessageState, RecipientState, apply, fold
from services.queue.core.decide import DeleteBody, Output, Trigger, apply_outputs, decide
from services.queue.core.routing import Routing
from services.queue.core.summary import QueueEntry, summarize
from services.queue.core.timers import ClearTimers, SetTimer, TimerFired, Timing

__all__ = [
    "ClearTimers",
    "DeleteBody",
    "MessageState",
    "Output",
    "QueueEntry",
    "RecipientState",
    "Routing",
    "SetTimer",
    "TimerFired",
    "Timing",
    "Trigger",
    "apply",
    "apply_outputs",
    "decide",
    "fold",
    "summarize",
]
