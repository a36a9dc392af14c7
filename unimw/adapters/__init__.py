"""Adapters: one module per vendor wire protocol.

The registry maps a provider ``kind`` from policies.yaml to its adapter
class and to the model of the options it takes. Both are named by import
path: a vendor's module is imported only when a gateway uses it, and the
options models (:mod:`unimw.adapters.options`) only when a policy is read,
which imports no adapter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from unimw.adapters.base import Adapter
    from unimw.adapters.options import Options


class Kind(NamedTuple):
    """One provider kind: where its adapter class is, and the model of its ``options``."""

    #: ``"package.module:Class"`` of the adapter.
    adapter: str
    #: ``"package.module:Class"`` of its :class:`~unimw.adapters.options.Options`.
    options: str

    def options_model(self) -> type[Options]:
        """The model ``providers.<name>.options`` is checked with."""
        model: type[Options] = _load(self.options)
        return model


ADAPTERS: dict[str, Kind] = {
    "anthropic": Kind("unimw.adapters.anthropic:AnthropicAdapter", "unimw.adapters.options:AnthropicOptions"),
    "gemini": Kind("unimw.adapters.gemini:GeminiAdapter", "unimw.adapters.options:GeminiOptions"),
    "mock": Kind("unimw.adapters.mock:MockAdapter", "unimw.adapters.options:MockOptions"),
    "openai": Kind("unimw.adapters.openai:OpenAIAdapter", "unimw.adapters.options:OpenAIOptions"),
}


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class registered for ``kind``."""
    cls: type[Adapter] = _load(ADAPTERS[kind].adapter)
    return cls


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
