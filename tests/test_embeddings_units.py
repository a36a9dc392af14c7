"""Embeddings, piece by piece: the operation's checks and readings, the vendors' bodies and answers, prices."""

from __future__ import annotations

import base64
import struct
import warnings
from typing import Any

import pytest
from google.genai import types
from pydantic import BaseModel, ConfigDict

from tests.upstreams.gemini_app import vector as gemini_vector
from unimw.adapters.base import Target
from unimw.adapters.gemini import embed_dropped, from_embed_response, to_embed_requests
from unimw.adapters.mock import MAX_EMBEDDING_DIMENSIONS, MockAdapter, embedding
from unimw.adapters.openai import chat_url, embeddings_url
from unimw.errors import InvalidRequest, UpstreamError
from unimw.operations.embeddings import EMBEDDINGS, decode_vector, encode_vector, finish, input_tokens
from unimw.policy import Provider
from unimw.usage import DEFAULT_PRICES, Usage, cost_micros
from unimw.wire import JSON, dumps

pytestmark = pytest.mark.anyio

GEMINI = Target("gem-embed", "gemini-embedding-001", "gem", {"taskType": "RETRIEVAL_QUERY"})


class EmbedContentRequest(BaseModel):
    """The ``embedContent`` REST body (and each of ``batchEmbedContents``'s), from the SDK's own fields."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    content: types.Content
    taskType: str | None = None
    title: str | None = None
    outputDimensionality: int | None = None


class BatchEmbedContentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[EmbedContentRequest]


def check_with_sdk(model: type[BaseModel], body: JSON) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.model_validate_json(dumps(body), by_alias=True, by_name=False)


def test_gemini_bodies_fit_the_sdk_types() -> None:
    requests = to_embed_requests({"model": "gem-embed", "input": ["a", "b"], "dimensions": 7}, GEMINI)
    assert requests == [
        {
            "taskType": "RETRIEVAL_QUERY",
            "outputDimensionality": 7,
            "model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": text}]},
        }
        for text in ("a", "b")
    ]
    check_with_sdk(BatchEmbedContentsRequest, {"requests": requests})
    (one,) = to_embed_requests({"model": "gem-embed", "input": "a"}, GEMINI)
    check_with_sdk(EmbedContentRequest, one)
    with pytest.raises(InvalidRequest) as caught:
        to_embed_requests({"model": "gem-embed", "input": [5, 6]}, GEMINI)
    assert (caught.value.param, caught.value.code) == ("input", "invalid_value")


def test_gemini_answers_become_create_embedding_responses() -> None:
    batch = {"embeddings": [{"values": gemini_vector("m", "a")}, {"values": gemini_vector("m", "b")}]}
    types.EmbedContentResponse.model_validate_json(dumps(batch), by_alias=True, by_name=False)
    single = {"embedding": {"values": [0.5, -0.25]}}
    types.ContentEmbedding.model_validate_json(dumps(single["embedding"]), by_alias=True, by_name=False)
    assert from_embed_response(single, 1, "gemini-embedding-001") == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
        "model": "gemini-embedding-001",
    }
    counted = from_embed_response({**batch, "usageMetadata": {"promptTokenCount": 9}}, 2, "m")
    assert ([d["index"] for d in counted["data"]], counted["usage"]) == (
        [0, 1],
        {"prompt_tokens": 9, "total_tokens": 9},
    )
    for wrong in ({"embeddings": batch["embeddings"][:1]}, {}, {"embeddings": [{"values": None}, {}]}):
        with pytest.raises(UpstreamError) as failed:
            from_embed_response(wrong, 2, "m")
        assert (failed.value.status, failed.value.code) == (502, "bad_upstream_response")


def test_gemini_leaves_out_what_it_has_no_field_for() -> None:
    request = {"model": "m", "input": "a", "dimensions": 3, "encoding_format": "base64", "user": "u", "extra": 1}
    assert embed_dropped(request) == ("extra", "user")


def test_base64_is_little_endian_float32() -> None:
    assert encode_vector([1.0, -2.0]) == base64.b64encode(b"\x00\x00\x80?\x00\x00\x00\xc0").decode()
    assert decode_vector(encode_vector([0.25, -0.5, 3.0])) == [0.25, -0.5, 3.0]
    raw = base64.b64decode(encode_vector([0.1]))
    assert struct.unpack("<f", raw) == (struct.unpack("<f", struct.pack("<f", 0.1))[0],)  # float32, not float64


def test_finish_packs_floats_only_when_asked_and_fills_missing_usage() -> None:
    answer: dict[str, Any] = {"data": [{"object": "embedding", "index": 0, "embedding": [1.0]}], "model": "m"}
    assert finish(answer, {"input": ["abcdefgh", "x"], "encoding_format": "base64"}) == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": encode_vector([1.0])}],
        "model": "m",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    counted = {"object": "list", "data": [{"embedding": "AACAPw=="}], "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    assert finish(dict(counted), {"input": "x", "encoding_format": "base64"}) == counted  # already packed upstream


def test_usage_reading_and_estimates() -> None:
    assert EMBEDDINGS.read({"model": "m", "usage": {"prompt_tokens": 7, "total_tokens": 7}}).usage == Usage(7, 0)
    assert EMBEDDINGS.read({"model": "m"}).usage is None
    assert [input_tokens(v) for v in ("abcde", ["ab", "abcdefghi"], [1, 2, 3], [[1, 2], [3]])] == [2, 4, 3, 3]
    request = {"model": "m", "input": ["abcd"] * 3}
    assert (EMBEDDINGS.prompt_tokens(request), EMBEDDINGS.worst_output_tokens(request, 4096)) == (3, 0)
    assert EMBEDDINGS.output_text({"data": [{"embedding": [0.5] * 100}]}) == ""


def test_built_in_embedding_prices_are_input_only() -> None:
    million = Usage(1_000_000, 0)
    assert [
        cost_micros(DEFAULT_PRICES[m], million)
        for m in ("text-embedding-3-small", "text-embedding-3-large", "gemini-embedding-001")
    ] == [20_000, 130_000, 150_000]


def test_azure_embeddings_use_the_deployment_path() -> None:
    base = "https://r.openai.azure.com/openai"
    azure = {"api_version": "2024-10-21"}
    assert embeddings_url(base, azure, "emb-small") == f"{base}/deployments/emb-small/embeddings?api-version=2024-10-21"
    assert embeddings_url(base + "/v1", {}, "x") == base + "/v1/embeddings"
    assert embeddings_url("https://api.openai.com/v1", None, "x") == "https://api.openai.com/v1/embeddings"
    assert chat_url(base, azure, "gpt") == f"{base}/deployments/gpt/chat/completions?api-version=2024-10-21"


async def test_the_mock_is_deterministic_and_bounded() -> None:
    mock = MockAdapter(Provider(kind="mock"))
    target = Target("mock-echo", "mock-echo", "mock")
    answer = await mock.embed({"model": "mock-echo", "input": "hi", "dimensions": 3}, target)
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding("hi", 3)}],
        "model": "mock-echo",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }
    assert embedding("hi", 3) == embedding("hi", 3) != embedding("ho", 3)
    with pytest.raises(InvalidRequest) as caught:
        await mock.embed({"model": "mock-echo", "input": "hi", "dimensions": MAX_EMBEDDING_DIMENSIONS + 1}, target)
    assert caught.value.param == "dimensions"
