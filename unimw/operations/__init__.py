"""Operations: what each kind of call (chat completions, and the ones to come) gives the one pipeline.

See :mod:`unimw.operations.base` for what an operation supplies, and
:mod:`unimw.operations.chat` for the one every adapter speaks.
"""

from unimw.operations.base import CONTROL_FIELD, Operation, Reading, StreamWatch
from unimw.operations.chat import CHAT, ChatCompletions
from unimw.operations.embeddings import EMBEDDINGS, Embeddings
from unimw.operations.responses import RESPONSES, Responses

#: The operations every door serves, by their path below the door's prefix.
DEFAULT_OPERATIONS: tuple[Operation, ...] = (CHAT, RESPONSES, EMBEDDINGS)

__all__ = [
    "CHAT",
    "CONTROL_FIELD",
    "DEFAULT_OPERATIONS",
    "EMBEDDINGS",
    "RESPONSES",
    "ChatCompletions",
    "Embeddings",
    "Operation",
    "Reading",
    "Responses",
    "StreamWatch",
]
