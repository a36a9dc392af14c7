"""``POST /v1/embeddings`` with the official SDK, on the OpenAI-wire and Gemini-wire loopbacks and the mock."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import sdk
from tests.otel import Telemetry
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.gemini_app import GeminiUpstream
from tests.upstreams.gemini_app import vector as gemini_vector
from tests.upstreams.openai_app import OpenAIUpstream
from tests.upstreams.openai_app import vector as openai_vector
from unimw import Gateway
from unimw.adapters.mock import embedding as mock_vector
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio

SPEC = "/work/shared/spec/openai-openapi.yaml"
TEXTS = ["alpha", "beta", "gamma"]
ACME_KEY = "sk-acme-embed-0123456789"


@pytest.fixture
def sections(
    _gemini_server: tuple[GeminiUpstream, str], _anthropic_server: tuple[AnthropicUpstream, str]
) -> dict[str, Any]:
    """Policy sections beside the conftest ones: an OpenAI-wire, a Gemini and an Anthropic embedding candidate."""
    return {
        "providers": {
            "gem": {"kind": "gemini", "base_url": _gemini_server[1] + "/v1beta", "api_key": "gk-embed", "timeout": 5},
            "anth": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "ak-embed", "timeout": 5},
        },
        "models": {
            "embed": {"provider": "primary", "model": "up-embed"},
            "gem-embed": {
                "provider": "gem",
                "model": "gemini-embedding-001",
                "params": {"taskType": "RETRIEVAL_DOCUMENT"},
            },
            "claude": {"provider": "anth", "model": "claude-sonnet-4-0"},
        },
        "aliases": {"mixed": {"targets": ["claude", "embed"], "strategy": "fallback"}},
    }


@pytest.fixture
async def http(make_gateway: Callable[..., Gateway], sections: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP into a gateway with every embedding candidate, to see the wire as it is."""
    gateway = make_gateway(**sections)
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw/v1") as client:
        yield client


def unpack(data: str) -> list[float]:
    """A ``base64`` embedding decoded as OpenAI documents it: little-endian float32."""
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_openai_wire_floats_base64_and_dimensions(
    make_gateway: Callable[..., Gateway], sections: dict[str, Any], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**sections))
    floats = await client.embeddings.create(model="embed", input=TEXTS, encoding_format="float")
    assert [(d.index, d.embedding) for d in floats.data] == [
        (i, openai_vector("up-embed", t)) for i, t in enumerate(TEXTS)
    ]
    assert (floats.model, floats.usage.prompt_tokens, floats.usage.total_tokens) == ("up-embed", 6, 6)
    packed = await client.embeddings.create(model="embed", input=TEXTS)  # the SDK asks base64 and decodes it
    assert [d.embedding for d in packed.data] == [openai_vector("up-embed", t) for t in TEXTS]
    short = await client.embeddings.create(model="embed", input="alpha", dimensions=3, encoding_format="float")
    assert short.data[0].embedding == openai_vector("up-embed", "alpha", 3)
    # The caller's encoding goes through: this upstream speaks it.
    assert upstream.requests == [
        {"model": "up-embed", "input": TEXTS, "encoding_format": "float"},
        {"model": "up-embed", "input": TEXTS, "encoding_format": "base64"},
        {"model": "up-embed", "input": "alpha", "dimensions": 3, "encoding_format": "float"},
    ]
    assert upstream.urls == ["/v1/embeddings"] * 3


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("embed", [openai_vector("up-embed", t) for t in TEXTS]),
        ("gem-embed", [gemini_vector("gemini-embedding-001", t) for t in TEXTS]),
        ("mock-echo", [mock_vector(t) for t in TEXTS]),
    ],
)
async def test_base64_is_packed_little_endian_float32(
    http: httpx.AsyncClient, upstream: OpenAIUpstream, gemini: GeminiUpstream, model: str, expected: list[list[float]]
) -> None:
    answer = await http.post("/embeddings", json={"model": model, "input": TEXTS, "encoding_format": "base64"})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [(d["object"], d["index"]) for d in data] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    assert [unpack(d["embedding"]) for d in data] == expected


async def test_gemini_wire_one_and_many_inputs(
    make_gateway: Callable[..., Gateway], sections: dict[str, Any], gemini: GeminiUpstream
) -> None:
    client = sdk(make_gateway(**sections))
    one = await client.embeddings.create(model="gem-embed", input="alpha")
    many = await client.embeddings.create(model="gem-embed", input=TEXTS, dimensions=4, encoding_format="float")
    assert one.data[0].embedding == gemini_vector("gemini-embedding-001", "alpha")
    assert [d.embedding for d in many.data] == [gemini_vector("gemini-embedding-001", t, 4) for t in TEXTS]
    # Gemini counts no tokens: about four bytes a token, per input.
    assert [(r.model, r.usage.prompt_tokens, r.usage.total_tokens) for r in (one, many)] == [
        ("gemini-embedding-001", 2, 2),
        ("gemini-embedding-001", 5, 5),
    ]
    assert gemini.urls == [
        "/v1beta/models/gemini-embedding-001:embedContent",
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
    ]
    assert gemini.requests == [
        {"taskType": "RETRIEVAL_DOCUMENT", "content": {"parts": [{"text": "alpha"}]}},
        {
            "requests": [
                {
                    "taskType": "RETRIEVAL_DOCUMENT",
                    "outputDimensionality": 4,
                    "model": "models/gemini-embedding-001",
                    "content": {"parts": [{"text": t}]},
                }
                for t in TEXTS
            ]
        },
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="gem-embed", input=[[1, 2, 3]])
    assert (caught.value.code, caught.value.param, gemini.calls["gemini-embedding-001"]) == (
        "invalid_value",
        "input",
        2,
    )


async def test_the_mock_embeds_offline_with_dimensions(
    make_gateway: Callable[..., Gateway], sections: dict[str, Any]
) -> None:
    client = sdk(make_gateway(**sections))
    answer = await client.embeddings.create(model="mock-echo", input=TEXTS)
    tokens = await client.embeddings.create(model="mock-echo", input=[[1, 2, 3], [4]], dimensions=5)
    assert [d.embedding for d in answer.data] == [mock_vector(t) for t in TEXTS]
    assert [d.embedding for d in tokens.data] == [mock_vector([1, 2, 3], 5), mock_vector([4], 5)]
    assert [(r.model, r.usage.prompt_tokens) for r in (answer, tokens)] == [("mock-echo", 5), ("mock-echo", 4)]


async def test_an_identical_call_is_a_cache_hit(
    make_gateway: Callable[..., Gateway], sections: dict[str, Any], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(cache={"enabled": True}, **sections))
    first = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS)
    second = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS, user="someone-else")
    assert [r.headers["x-unimw-cache"] for r in (first, second)] == ["miss", "hit"]
    assert first.parse().model_dump() == second.parse().model_dump()
    floats = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS, encoding_format="float")
    assert floats.headers["x-unimw-cache"] == "miss"  # a cached answer is in the encoding it was asked in
    assert upstream.calls == {"up-embed": 2}


async def test_a_budget_refuses_with_insufficient_quota(
    make_gateway: Callable[..., Gateway], sections: dict[str, Any], upstream: OpenAIUpstream
) -> None:
    """1 USD an input token: the first call costs 6 USD (its usage); the next one's 5-token reserve passes 10 USD."""
    sections["models"]["embed"]["price"] = {"input": 1_000_000, "output": 0}
    gateway = make_gateway(
        tenancy={"resolve": ["api_key"]},
        tenants={"acme": {"api_keys": [hash_key(ACME_KEY)], "limits": [{"per": "month", "usd": 10}]}},
        **sections,
    )
    client = sdk(gateway, ACME_KEY)
    await client.embeddings.create(model="embed", input=TEXTS)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.embeddings.create(model="embed", input=TEXTS)
    assert (caught.value.status_code, caught.value.code, caught.value.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert upstream.calls == {"up-embed": 1}


async def test_the_call_span_says_embeddings(
    make_gateway: Callable[..., Gateway],
    sections: dict[str, Any],
    upstream: OpenAIUpstream,
    upstream_url: str,
    telemetry: Telemetry,
) -> None:
    client = sdk(make_gateway(telemetry=telemetry, **sections))
    await client.embeddings.create(model="embed", input=TEXTS, dimensions=4, encoding_format="float")
    call = telemetry.span("embeddings embed")
    attributes = call["attributes"]
    request_id = attributes.pop("unimw.request.id")
    assert (call["kind"], call["parent"], request_id.startswith("req_")) == ("CLIENT", None, True)
    assert attributes == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "embed",
        "gen_ai.request.encoding_formats": ("float",),
        "gen_ai.embeddings.dimension.count": 4,
        "gen_ai.response.model": "up-embed",
        "gen_ai.usage.input_tokens": 6,
        "gen_ai.usage.output_tokens": 0,
        "server.address": "127.0.0.1",
        "server.port": urlsplit(upstream_url).port,
        "unimw.route.strategy": "single",
        "unimw.status": "ok",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "none",
        "unimw.cost.usd": 0.0,
        "unimw.target": "embed",
        "unimw.provider": "primary",
    }
    assert [s["name"] for s in telemetry.spans()] == ["embeddings embed"]


async def test_a_gemini_attempt_records_the_fields_gemini_has_no_place_for(
    make_gateway: Callable[..., Gateway], sections: dict[str, Any], gemini: GeminiUpstream, telemetry: Telemetry
) -> None:
    client = sdk(make_gateway(telemetry=telemetry, **sections))
    await client.embeddings.create(model="gem-embed", input=TEXTS, user="end-user-1")
    call = telemetry.span("embeddings gem-embed")  # its one attempt's fields are on it
    assert (call["status"], call["attributes"]["unimw.request.dropped_params"]) == ("UNSET", ("user",))
    assert call["attributes"]["gen_ai.usage.input_tokens"] == 5


async def test_a_model_that_cannot_embed_is_a_400_naming_model(
    http: httpx.AsyncClient, upstream: OpenAIUpstream, claude: AnthropicUpstream
) -> None:
    refused = await http.post("/embeddings", json={"model": "claude", "input": "alpha"})
    assert (refused.status_code, refused.json()) == (
        400,
        {
            "error": {
                "message": "`claude` cannot create embeddings.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "unsupported_model",
            }
        },
    )
    # An alias skips its targets that cannot embed, and falls back among the others.
    mixed = await http.post("/embeddings", json={"model": "mixed", "input": "alpha", "encoding_format": "float"})
    assert (mixed.status_code, mixed.json()["model"]) == (200, "up-embed")
    assert (dict(claude.calls), dict(upstream.calls)) == ({}, {"up-embed": 1})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": ["x"] * 2049}, "input"),
        ({"model": "embed", "input": {"text": "x"}}, "input"),
        ({"model": "embed", "input": ["a", "b", "c", 4]}, "input[3]"),
        ({"model": "embed", "input": ["a", ""]}, "input[1]"),
        ({"model": "embed", "input": [1, 2, -3]}, "input[2]"),
        ({"model": "embed", "input": [1, True]}, "input[1]"),
        ({"model": "embed", "input": [[1], []]}, "input[1]"),
        ({"model": "embed", "input": [[1], [2, "x"]]}, "input[1][1]"),
        ({"model": "embed", "input": [None]}, "input[0]"),
        ({"model": "embed", "input": "x", "encoding_format": "binary"}, "encoding_format"),
        ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "embed", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "embed", "input": "x", "user": 7}, "user"),
        ({"input": "x"}, "model"),
    ],
)
async def test_bad_requests_are_400s_naming_the_param(
    http: httpx.AsyncClient, upstream: OpenAIUpstream, body: dict[str, Any], param: str
) -> None:
    answer = await http.post("/embeddings", json=body)
    assert (answer.status_code, answer.json()["error"]["param"], upstream.calls) == (400, param, {})


@cache
def _spec_validator(name: str) -> Draft202012Validator:
    with open(SPEC, "rb") as file:
        spec = yaml.load(file, Loader=yaml.CSafeLoader)
    registry: Registry[Any] = Registry().with_resource("spec", Resource.from_contents(spec, DRAFT202012))
    return Draft202012Validator({"$ref": f"spec#/components/schemas/{name}"}, registry=registry)


@pytest.mark.parametrize("model", ["embed", "gem-embed", "mock-echo"])
async def test_the_answer_is_a_create_embedding_response(
    http: httpx.AsyncClient, upstream: OpenAIUpstream, gemini: GeminiUpstream, model: str
) -> None:
    answer = await http.post("/embeddings", json={"model": model, "input": TEXTS, "encoding_format": "float"})
    errors = [e.message for e in _spec_validator("CreateEmbeddingResponse").iter_errors(answer.json())]
    assert (answer.status_code, errors) == (200, [])


async def test_models_say_which_operations_they_serve(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/models")).json()["data"]
    assert {m["id"]: m["x_unimw"] for m in listed} == {
        "gpt-main": {"operations": ["chat/completions", "responses", "embeddings"]},
        "gpt-backup": {"operations": ["chat/completions", "responses", "embeddings"]},
        "mock-echo": {"operations": ["chat/completions", "responses", "embeddings"]},
        "embed": {"operations": ["chat/completions", "responses", "embeddings"]},
        "gem-embed": {"operations": ["chat/completions", "responses", "embeddings"]},
        "claude": {"operations": ["chat/completions", "responses"]},
        "smart": {"operations": ["chat/completions", "responses", "embeddings"]},
        "mixed": {"operations": ["chat/completions", "responses", "embeddings"]},
    }
    one = (await http.get("/models/claude")).json()
    assert one["x_unimw"] == {"operations": ["chat/completions", "responses"]}
