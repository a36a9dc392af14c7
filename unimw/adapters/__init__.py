"""Adapters: one module per vendor wire protocol.

The registry maps a provider ``kind`` from policies.yaml to the adapter
class, named by import path so that a vendor's module is only imported when
a policy uses it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unimw.adapters.base import Adapter

ADAPTERS: dict[str, str] = {
    "anthropic": "unimw.adapters.anthropic:AnthropicAdapter",
    "gemini": "unimw.adapters.gemini:GeminiAdapter",
    "mock": "unimw.adapters.mock:MockAdapter",
    "openai": "unimw.adapters.openai:OpenAIAdapter",
}


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class registered for ``kind``."""
    module, _, name = ADAPTERS[kind].partition(":")
    cls: type[Adapter] = getattr(importlib.import_module(module), name)
    return cls
