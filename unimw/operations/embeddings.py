"""``POST /embeddings``: OpenAI's Embeddings API, on the one pipeline.

Adapters that can embed say so (``supports_embeddings``) and answer a
``CreateEmbeddingResponse`` from ``embed``: OpenAI-wire providers forward the
request, Gemini translates it to ``embedContent`` / ``batchEmbedContents``,
the mock hashes each input. A route's targets that cannot embed are left out
of the call (:meth:`Embeddings.prepare`); a route with none is a 400 naming
``model``.

``encoding_format``: an OpenAI-wire upstream gets the caller's and answers
in it; vectors that come back as floats when the caller asked ``base64``
(always, from Gemini and the mock) are packed here, as OpenAI does: float32,
little-endian, base64. The cache keys on the encoding too, since what it
stores is what the caller was sent.

Usage is the answer's ``usage.prompt_tokens`` (no output tokens); a vendor
that does not count (Gemini) gets an estimate from the input's size, put in
the answer's ``usage`` as OpenAI's schema requires one.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Final

from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_EMBEDDINGS_DIMENSION_COUNT,
    GEN_AI_REQUEST_ENCODING_FORMATS,
    GenAiOperationNameValues,
)

from unimw.adapters import adapter_class
from unimw.errors import InvalidRequest
from unimw.operations.base import CONTROL_FIELD, Operation, Reading
from unimw.operations.fields import check_length
from unimw.usage import Usage
from unimw.wire import JSON

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from unimw.adapters.base import Adapter, Target
    from unimw.calls import Call
    from unimw.policy import Policy

#: Most inputs in one request: OpenAI's ``maxItems`` on each array form of ``input``.
MAX_INPUTS: Final = 2048
ENCODINGS: Final = ("float", "base64")


class Embeddings(Operation):
    """Embeddings, as OpenAI defines them, for the targets whose adapter can embed."""

    name: ClassVar[str] = GenAiOperationNameValues.EMBEDDINGS.value
    path: ClassVar[str] = "/embeddings"
    not_in_cache_key: ClassVar[frozenset[str]] = frozenset({"model", "user", CONTROL_FIELD})

    def __init__(self, embedders: frozenset[str] = frozenset()) -> None:
        #: The policy's providers whose adapter can embed (set by :meth:`bind`).
        self._embedders = embedders

    def bind(self, policy: Policy) -> Embeddings:
        return Embeddings(frozenset(name for name, p in policy.providers.items() if self.serves(adapter_class(p.kind))))

    def serves(self, adapter: type[Adapter]) -> bool:
        """Whether a model behind ``adapter`` can answer this operation."""
        return bool(getattr(adapter, "supports_embeddings", False))

    def validate(self, body: Any) -> JSON:
        request = super().validate(body)
        _check_input(request.get("input"))
        encoding = request.get("encoding_format")
        if encoding is not None and encoding not in ENCODINGS:
            raise InvalidRequest(
                f"Invalid value for 'encoding_format': {encoding!r}. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        dimensions = request.get("dimensions")
        if dimensions is not None and (not _integer(dimensions) or dimensions < 1):
            raise InvalidRequest(
                "Invalid 'dimensions': expected an integer of at least 1.", param="dimensions", code="invalid_value"
            )
        if (user := request.get("user")) is not None and not isinstance(user, str):
            raise InvalidRequest("Invalid type for 'user': expected a string.", param="user", code="invalid_type")
        return request

    async def prepare(self, call: Call) -> None:
        """Narrow the call's route to the targets that can embed (a mixed alias falls back among those only)."""
        route = call.route
        assert route is not None
        able = [i for i, target in enumerate(route.targets) if target.provider in self._embedders]
        if not able:
            raise InvalidRequest(f"`{route.name}` cannot create embeddings.", param="model", code="unsupported_model")
        if len(able) < len(route.targets):
            call.route = replace(
                route,
                targets=tuple(route.targets[i] for i in able),
                weights=tuple(route.weights[i] for i in able),
            )

    # ── what a call may cost ─────────────────────────────────────────────────

    def prompt_tokens(self, request: JSON) -> int:
        return input_tokens(request["input"])

    def worst_output_tokens(self, request: JSON, default_cap: int) -> int:
        return 0  # an embedding is not generated text

    # ── asking the adapters ──────────────────────────────────────────────────

    async def complete(self, adapter: Adapter, request: JSON, target: Target) -> JSON:
        return finish(await adapter.embed(request, target), request)

    # ── reading answers ──────────────────────────────────────────────────────

    def read(self, answer: JSON) -> Reading:
        usage = answer.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        model = answer.get("model")
        counted = Usage(prompt) if isinstance(prompt, int) and not isinstance(prompt, bool) else None
        return Reading(counted, None, model if isinstance(model, str) else None)

    def output_text(self, answer: JSON) -> str:
        return ""  # nothing generated: an estimate counts the input only

    def cacheable(self, answer: JSON) -> bool:
        return bool(answer.get("data"))

    # ── what its spans say ───────────────────────────────────────────────────

    def request_attributes(self, request: JSON) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        if isinstance(encoding := request.get("encoding_format"), str):
            attributes[GEN_AI_REQUEST_ENCODING_FORMATS] = (encoding,)
        if _integer(dimensions := request.get("dimensions")):
            attributes[GEN_AI_EMBEDDINGS_DIMENSION_COUNT] = dimensions
        return attributes


def finish(answer: JSON, request: JSON) -> JSON:
    """``answer`` as the caller asked for it: float vectors packed when it asked ``base64``, usage present."""
    answer.setdefault("object", "list")
    if request.get("encoding_format") == "base64":
        for item in answer.get("data") or ():
            if isinstance(item, dict) and isinstance(vector := item.get("embedding"), list):
                item["embedding"] = encode_vector(vector)
    usage = answer.get("usage")
    if not isinstance(usage, dict) or not _integer(usage.get("prompt_tokens")):
        tokens = input_tokens(request["input"])
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return answer


def encode_vector(vector: list[float]) -> str:
    """OpenAI's ``base64`` encoding: the vector as little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def decode_vector(data: str) -> list[float]:
    """The floats of a ``base64`` embedding (what the OpenAI SDK does on receipt)."""
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def texts(value: Any) -> list[Any]:
    """A validated ``input`` as a list of inputs: strings, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    if value and _integer(value[0]):
        return [value]  # one input given as token ids
    return list(value)


def input_tokens(value: Any) -> int:
    """Tokens in a validated ``input``: about four bytes of text a token, or the token ids counted."""
    return sum(len(item) if isinstance(item, list) else (len(item.encode()) + 3) // 4 for item in texts(value))


def _check_input(value: Any) -> None:
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("Invalid 'input': the string is empty.", param="input", code="invalid_value")
        return
    if not isinstance(value, list):
        raise _invalid("input", "expected a string or an array")
    if not value:
        raise InvalidRequest(
            "Invalid 'input': empty array. Expected an array with at least one item.", param="input", code="empty_array"
        )
    check_length(value, "input", MAX_INPUTS)
    first = value[0]
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if isinstance(first, str):
            if not isinstance(item, str) or not item:
                raise _invalid(param, "expected a non-empty string, as the first item is")
        elif _integer(first):
            if not _integer(item) or item < 0:
                raise _invalid(param, "expected a token id (a non-negative integer), as the first item is")
        elif isinstance(first, list):
            _check_tokens(param, item)
        else:
            raise _invalid(param, "expected a string, a token id or an array of token ids")


def _check_tokens(param: str, item: Any) -> None:
    if not isinstance(item, list) or not item:
        raise _invalid(param, "expected a non-empty array of token ids, as the first item is")
    for j, token in enumerate(item):
        if not _integer(token) or token < 0:
            raise _invalid(f"{param}[{j}]", "expected a token id (a non-negative integer)")


def _invalid(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {expected}.", param=param, code="invalid_value")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


EMBEDDINGS: Final = Embeddings()
