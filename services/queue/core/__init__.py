"""The queue's pure core: its transitions (one table), the message aggregate, routing,
timers and the decision function."""

from services.queue.core.aggregate import MessageState, RecipientState, apply, fold
from services.queue.core.decide import DeleteBody, Output, Trigger, apply_outputs, decide
from services.queue.core.routing import Routing
from services.queue.core.summary import QueueEntry, summarize
from services.queue.core.timers import ClearTimers, SetTimer, TimerFired, Timing
from services.queue.core.transitions import MessageStatus, RecipientStatus

__all__ = [
    "ClearTimers",
    "DeleteBody",
    "MessageState",
    "MessageStatus",
    "Output",
    "QueueEntry",
    "RecipientState",
    "RecipientStatus",
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
