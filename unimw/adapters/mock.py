"""A deterministic, offline provider for demos and for users' own tests.

It never pretends to be a real model: every reply says it comes from the
mock, and the model ids in policies.yaml should say so too (``mock-echo``).
Given the same request it always gives the same answer, with honest usage
counts, streaming, tool calls and structured output:

* with ``tools``, it calls a tool when ``tool_choice`` is ``required`` or
  names one, or when the last user message mentions a tool by name;
* with a ``json_schema`` response format, it answers a JSON document that
  fits the schema's types;
* otherwise it answers a short sentence quoting the last user message.

Embeddings are deterministic too (:func:`embedding`): each input's vector
comes from a hash of it, :data:`EMBEDDING_DIMENSIONS` long unless the
request asks for ``dimensions``, with usage counted from the text.

Options (``providers.<name>.options``): ``latency`` (seconds before the
answer) and ``chunk_delay`` (seconds between streamed chunks).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from unimw.adapters.base import Target
from unimw.errors import InvalidRequest
from unimw.policy import Provider
from unimw.wire import JSON, chunk, dumps, now, usage, usage_chunk

#: Nesting :func:`sample` follows; it recurses no deeper. The request body itself may nest 64
#: levels, and real schemas stay under 10.
MAX_DEPTH = 64
_SCHEMA_PARAM = "response_format.json_schema.schema"
#: The length of a mock embedding when the request sets no ``dimensions``.
EMBEDDING_DIMENSIONS = 8
#: The longest mock embedding (as long as OpenAI's largest), so a request cannot make it build a huge one.
MAX_EMBEDDING_DIMENSIONS = 3072


def count_tokens(text: str) -> int:
    """A rough, stable token count: about one token per four characters."""
    return max(1, (len(text) + 3) // 4) if text else 0


def prompt_text(request: JSON) -> str:
    parts: list[str] = []
    for message in request.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(_texts(content))
    return "\n".join(parts)


def last_user_text(request: JSON) -> str:
    for message in reversed(request.get("messages") or ()):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(_texts(content))
    return ""


def _texts(parts: list[Any]) -> list[str]:
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def sample(schema: Any, *, param: str | None = None, depth: int = 1) -> Any:
    """A small value that fits a JSON schema's types.

    One pass over the schema as given (``$ref`` is not followed), so the work is that of reading
    it; refused past :data:`MAX_DEPTH` levels with a 400 naming ``param``.
    """
    if not isinstance(schema, dict):
        return None
    if depth > MAX_DEPTH:
        where = f"Invalid '{param}'" if param else "Invalid schema"
        raise InvalidRequest(
            f"{where}: the schema is nested deeper than {MAX_DEPTH} levels.", param=param, code="invalid_value"
        )
    if isinstance(enum := schema.get("enum"), list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if isinstance(variants := schema.get(key), list) and variants:
            return sample(variants[0], param=param, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: sample(sub, param=param, depth=depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [sample(schema.get("items"), param=param, depth=depth + 1)]
    return {"string": "mock", "integer": 0, "number": 0, "boolean": False}.get(str(kind))


def _chosen_tool(request: JSON) -> tuple[int, JSON] | None:
    """The function tool to call and its place in ``tools``, if the mock calls one."""
    tools = [
        (i, t["function"])
        for i, t in enumerate(request.get("tools") or ())
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
    ]
    choice = request.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        return next(((i, f) for i, f in tools if f.get("name") == name), None)
    if choice == "required":
        return tools[0]
    text = last_user_text(request).lower()
    return next(((i, f) for i, f in tools if isinstance(f.get("name"), str) and f["name"].lower() in text), None)


def answer(request: JSON) -> tuple[JSON, str]:
    """The assistant message and finish reason the mock gives to ``request``."""
    chosen = _chosen_tool(request)
    if chosen is not None:
        i, function = chosen
        parameters = sample(function.get("parameters") or {}, param=f"tools[{i}].function.parameters")
        arguments = _encoded(parameters or {}, f"tools[{i}].function.parameters")
        digest = hashlib.sha256(dumps([function["name"], arguments, prompt_text(request)])).hexdigest()
        call = {
            "id": "call_mock_" + digest[:20],
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}, "tool_calls"
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        text = _encoded(sample(schema, param=_SCHEMA_PARAM), _SCHEMA_PARAM)
    elif response_format.get("type") == "json_object":
        text = '{"mock": true}'
    else:
        quoted = " ".join(last_user_text(request).split()[:12])
        text = f'This is a mock reply from unimw (no model was called). You said: "{quoted}"'
    return {"role": "assistant", "content": text, "refusal": None}, "stop"


def embedding(item: str | list[int], dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The mock's vector for one input: hash bytes as multiples of 1/128 in [-1, 1), exact in float32."""
    digest = hashlib.shake_256(dumps(item)).digest(dimensions)
    return [(byte - 128) / 128 for byte in digest]


def _encoded(value: Any, param: str) -> str:
    try:
        return dumps(value).decode()
    except TypeError as exc:  # a const or enum value nested past what the serialiser takes
        raise InvalidRequest(f"Invalid '{param}': the schema holds a value that cannot be sent.", param=param) from exc


def _output_text(message: JSON) -> str:
    if message.get("tool_calls"):
        return "".join(c["function"]["name"] + c["function"]["arguments"] for c in message["tool_calls"])
    return str(message.get("content") or "")


def _id(request: JSON) -> str:
    return "chatcmpl-mock" + hashlib.sha256(dumps(request.get("messages"))).hexdigest()[:24]


class MockAdapter:
    """Answers from :func:`answer`, as a chat completion or a stream of chunks; embeddings from :func:`embedding`."""

    supports_streaming: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True
    supports_embeddings: ClassVar[bool] = True
    provider_name: ClassVar[str] = "unimw.mock"  # no vendor: a name of our own
    default_base_url: ClassVar[str | None] = None  # offline: no server

    def dropped_params(self, request: JSON, target: Target) -> tuple[str, ...]:
        return ()

    def __init__(self, provider: Provider) -> None:
        self._latency = float(provider.options.get("latency", 0))
        self._chunk_delay = float(provider.options.get("chunk_delay", 0))

    async def complete(self, request: JSON, target: Target) -> JSON:
        if self._latency:
            await asyncio.sleep(self._latency)
        message, finish = answer(request)
        n = int(request.get("n") or 1)
        prompt_tokens = count_tokens(prompt_text(request))
        return {
            "id": _id(request),
            "object": "chat.completion",
            "created": now(),
            "model": target.model,
            "choices": [
                {"index": i, "message": dict(message), "finish_reason": finish, "logprobs": None} for i in range(n)
            ],
            "usage": usage(prompt_tokens, n * count_tokens(_output_text(message))),
        }

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        if self._latency:
            await asyncio.sleep(self._latency)
        return self._chunks(request, target)

    async def _chunks(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        message, finish = answer(request)
        id, model, created = _id(request), target.model, now()
        n = int(request.get("n") or 1)
        for index in range(n):
            yield chunk(id, model, created, {"role": "assistant", "content": ""}, index=index)
            if message.get("tool_calls"):
                call = message["tool_calls"][0]
                head = {
                    "index": 0,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                yield chunk(id, model, created, {"tool_calls": [head]}, index=index)
                for piece in _pieces(call["function"]["arguments"]):
                    await self._pause()
                    yield chunk(
                        id,
                        model,
                        created,
                        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                        index=index,
                    )
            else:
                for piece in _pieces(message["content"]):
                    await self._pause()
                    yield chunk(id, model, created, {"content": piece}, index=index)
            yield chunk(id, model, created, finish_reason=finish, index=index)
        if (request.get("stream_options") or {}).get("include_usage"):
            used = usage(count_tokens(prompt_text(request)), n * count_tokens(_output_text(message)))
            yield usage_chunk(id, model, created, used)

    async def embed(self, request: JSON, target: Target) -> JSON:
        if self._latency:
            await asyncio.sleep(self._latency)
        dimensions = request.get("dimensions") or EMBEDDING_DIMENSIONS
        if dimensions > MAX_EMBEDDING_DIMENSIONS:
            raise InvalidRequest(
                f"The mock makes embeddings of at most {MAX_EMBEDDING_DIMENSIONS} dimensions.",
                param="dimensions",
                code="invalid_value",
            )
        inputs = request["input"]
        items = [inputs] if isinstance(inputs, str) or isinstance(inputs[0], int) else inputs
        data = [{"object": "embedding", "index": i, "embedding": embedding(x, dimensions)} for i, x in enumerate(items)]
        tokens = sum(len(x) if isinstance(x, list) else count_tokens(x) for x in items)
        return {
            "object": "list",
            "data": data,
            "model": target.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _pause(self) -> None:
        if self._chunk_delay:
            await asyncio.sleep(self._chunk_delay)

    async def aclose(self) -> None:
        return None


def _pieces(text: str, size: int = 16) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
