"""Operations: what each kind of call (chat completions, and the ones to come) gives the one pipeline.

See :mod:`unimw.operations.base` for what an operation supplies, and
:mod:`unimw.operations.chat` for the one every adapter speaks.
"""

from unimw.operations.base import CONTROL_FIELD, Operation, Reading, StreamWatch
from unimw.operations.chat import CHAT, ChatCompletions

#: The operations every door serves, by their path below the door's prefix.
DEFAULT_OPERATIONS: tuple[Operation, ...] = (CHAT,)

__all__ = ["CHAT", "CONTROL_FIELD", "DEFAULT_OPERATIONS", "ChatCompletions", "Operation", "Reading", "StreamWatch"]
