"""Operations: what each kind of call (chat completions, and the ones to come) gives the one pipeline.

See :mod:`unimw.operations.base` for what an operation supplies, and
:mod:`unimw.operations.chat` for the one every adapter speaks.

The operations themselves are imported on first use (``DEFAULT_OPERATIONS``
when a gateway is built), not with the package: the steps import
:mod:`unimw.operations.base`, which runs this file first, and the Responses
API alone is about 1,500 lines that ``from unimw import Gateway`` need not
load. Type checkers read the imports below.
"""

from typing import TYPE_CHECKING, Any

from unimw.operations.base import CONTROL_FIELD, Operation, Reading, StreamWatch

if TYPE_CHECKING:
    from unimw.operations.chat import CHAT, ChatCompletions
    from unimw.operations.embeddings import EMBEDDINGS, Embeddings
    from unimw.operations.responses import RESPONSES, Responses

    #: The operations every door serves, by their path below the door's prefix.
    DEFAULT_OPERATIONS: tuple[Operation, ...]

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

#: The module that defines each operation (the TYPE_CHECKING imports above, as data).
_SOURCES = {
    "CHAT": "unimw.operations.chat",
    "ChatCompletions": "unimw.operations.chat",
    "EMBEDDINGS": "unimw.operations.embeddings",
    "Embeddings": "unimw.operations.embeddings",
    "RESPONSES": "unimw.operations.responses",
    "Responses": "unimw.operations.responses",
}


def __getattr__(name: str) -> Any:
    """Import an operation on first use, and keep it here so the next use is a plain lookup."""
    from importlib import import_module

    if name == "DEFAULT_OPERATIONS":
        value: Any = (__getattr__("CHAT"), __getattr__("RESPONSES"), __getattr__("EMBEDDINGS"))
    elif name in _SOURCES:
        value = getattr(import_module(_SOURCES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
