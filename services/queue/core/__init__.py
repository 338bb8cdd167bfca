"""The queue's pure core: the message aggregate, routing and the decision function."""

from services.queue.core.aggregate import MessageState, RecipientState, apply, fold
from services.queue.core.decide import DeleteBody, Output, apply_outputs, decide
from services.queue.core.routing import Routing

__all__ = [
    "DeleteBody",
    "MessageState",
    "Output",
    "RecipientState",
    "Routing",
    "apply",
    "apply_outputs",
    "decide",
    "fold",
]
