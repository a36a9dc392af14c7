"""Schema-driven fuzzing of a running ``unimw serve``: requests made by schemathesis from OpenAI's OpenAPI spec.

For each operation unimw serves, schemathesis generates requests that fit
the spec (positive) and requests that break it somewhere (negative: wrong
types, missing fields, bodies that are not JSON at all, odd headers and
query strings). The server, on the mock provider, must answer every one
with a 2xx whose body fits the spec, or a 4xx in OpenAI's error envelope:
never a 5xx, never a hang; it still answers ``/health`` afterwards.

Three cases in four are steered (:func:`steer`): a model the policy knows,
and the field the operation cannot do without where missing; some of them
also ask for a stream, or get a plain value of that field. They get past the
model lookup to validation and the mock.
Streamed answers are checked event by event against the spec's event
schema here: schemathesis reads a
``text/event-stream`` schema as OpenAPI 3.2 does (the schema of the whole
event, ``data`` a string), while OpenAI's 3.1 spec gives the schema of each
event's decoded ``data``. The spec's ``discriminator`` annotations are
left out (:func:`without_discriminators`), and its OpenAPI 3.0 ``nullable``
allows null (:func:`with_nullable`).
"""

from __future__ import annotations

import base64
import json
import struct
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import requests
import schemathesis
import schemathesis.checks
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import GenerationMode

from tests.operations.spec import SPEC_PATH
from tests.operations.spec import check as check_schema
from tests.test_cli_serve_limits import start, stop

#: The operations ``unimw serve`` answers, as the spec names them (its paths are below ``/v1``).
OPERATIONS = [
    ("POST", "/chat/completions"),
    ("POST", "/responses"),
    ("POST", "/embeddings"),
    ("GET", "/models"),
    ("GET", "/models/{model}"),
]
#: The schema of one streamed event's ``data``, for the operations that stream.
EVENT_SCHEMAS = {"/chat/completions": "CreateChatCompletionStreamResponse", "/responses": "ResponseStreamEvent"}
#: Examples per operation and mode: 10 runs of this many stay within about 30 s on two cores.
EXAMPLES = 30
MODEL = "mock-echo"
POLICY = f"""\
providers:
  mock: {{kind: mock}}
models:
  {MODEL}: {{provider: mock, model: mock-echo}}
"""
ENVELOPE_FIELDS = {"message", "type", "param", "code"}
#: What is done to a case before it is sent (:func:`steer`).
STEERING = ["as-made", "known-model", "streamed", "answerable"]


@cache
def raw_spec() -> dict[str, Any]:
    """The shared OpenAPI spec, parsed once (it is 3 MB of YAML)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with Path(SPEC_PATH).open(encoding="utf-8") as handle:
        spec: dict[str, Any] = yaml.load(handle, Loader=loader)
    return spec


@cache
def spec_schema() -> schemathesis.BaseSchema:
    """The spec as schemathesis reads it, with only the operations unimw serves."""
    spec = raw_spec()
    served: dict[str, dict[str, Any]] = {}
    for method, path in OPERATIONS:
        served.setdefault(path, {})[method.lower()] = spec["paths"][path][method.lower()]
    return schemathesis.openapi.from_dict(without_discriminators({**spec, "paths": served}))


def without_discriminators(node: Any) -> Any:
    """A copy of ``node`` less its ``discriminator`` annotations, which the ``oneOf`` beside each one decides.

    OpenAI's spec gives none of them a ``mapping``, so by OpenAPI's rule the
    value must name a schema (``ChatCompletionMessageToolCall``), and every
    real answer, whose ``type`` is ``function``, would be flagged.
    """
    if isinstance(node, dict):
        return {key: without_discriminators(value) for key, value in node.items() if key != "discriminator"}
    if isinstance(node, list):
        return [without_discriminators(value) for value in node]
    return node


def with_nullable(node: Any) -> Any:
    """A copy of ``node`` where OpenAPI 3.0's ``nullable: true``, which the 3.1 spec still uses in places
    (``finish_reason`` of a chunk), allows null as its authors meant; JSON Schema alone ignores it."""
    if isinstance(node, list):
        return [with_nullable(value) for value in node]
    if not isinstance(node, dict):
        return node
    copy = {key: with_nullable(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [copy, {"type": "null"}]} if node.get("nullable") is True else copy


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator of the spec's schema ``name``, for what schemathesis cannot check (streams, packed vectors)."""
    resource: Resource[Any] = Resource.from_contents(with_nullable(raw_spec()), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:spec", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry)


@pytest.fixture(scope="module", autouse=True)
def hypothesis_as_it_was() -> Iterator[None]:
    """Hypothesis as it was before schemathesis patched it, for the property tests after this module.

    The first strategy schemathesis makes patches Hypothesis for the whole
    process (a printer that prints no example, a larger buffer); a failing
    property test elsewhere would then not show its example.
    """
    from hypothesis import core
    from hypothesis.internal.conjecture import engine
    from hypothesis.strategies._internal import collections
    from schemathesis.generation.hypothesis import setup

    patched = [
        (core, "RepresentationPrinter"),
        (core, "BUFFER_SIZE"),
        (engine, "BUFFER_SIZE"),
        (collections, "BUFFER_SIZE"),
    ]
    saved = [(vars(module), name, vars(module)[name]) for module, name in patched]
    yield
    for namespace, name, value in saved:
        namespace[name] = value
    vars(setup).pop("_is_patched", None)  # the next strategy patches it again


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``unimw serve`` process on the mock, for the whole module."""
    config = tmp_path_factory.mktemp("fuzz") / "policies.yaml"
    config.write_text(POLICY)
    process, port = start(config=config)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


#: The field each operation cannot answer without, and a value of it that the mock answers.
CORE_FIELDS: dict[str, tuple[str, Any]] = {
    "/chat/completions": ("messages", [{"role": "user", "content": "ping"}]),
    "/responses": ("input", "ping"),
    "/embeddings": ("input", "ping"),
}


def steer(case: schemathesis.Case[Any], how: str) -> None:
    """Point ``case`` at the policy's model (``how`` not ``as-made``), so that it reaches validation and the mock:
    ``streamed`` also asks for a stream, ``answerable`` also gives a plain core field (the others stay as made)."""
    if case.path_parameters and "model" in case.path_parameters:
        case.path_parameters["model"] = MODEL
    if not isinstance(case.body, dict):
        return
    case.body["model"] = MODEL
    field, plain = CORE_FIELDS[case.operation.path]
    if how == "answerable" or field not in case.body:
        case.body[field] = plain
    if how == "streamed" and case.operation.path in EVENT_SCHEMAS:
        case.body["stream"] = True


def content_type(response: schemathesis.Response) -> str:
    return ",".join(response.headers.get("content-type", []))


def assert_error_envelope(response: schemathesis.Response) -> None:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``, the message a string."""
    assert content_type(response) == "application/json", response.content[:300]
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ENVELOPE_FIELDS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


def assert_events_fit(response: schemathesis.Response, path: str) -> None:
    """Each event of a streamed answer fits the spec's event schema; chat's end in ``[DONE]``.

    schemathesis reads the first 20 events of a stream and then stops (``stream_cut_short``): the events
    read in full are checked then, and the end is not looked for.
    """
    events = response.content.decode().split("\n\n")
    if response.stream_cut_short:
        events = events[:-1]  # the one being read when the reading stopped
    else:
        assert events.pop() == ""  # the stream ended after a whole event
    data = [line.removeprefix("data: ") for event in events for line in event.split("\n") if line.startswith("data: ")]
    assert data, response.content[:300]
    if path == "/chat/completions" and not response.stream_cut_short:
        assert data.pop() == "[DONE]"
    for event in data:
        found = [error.message for error in validator(EVENT_SCHEMAS[path]).iter_errors(json.loads(event))]
        assert not found, (event[:300], found[:3])


def check(case: schemathesis.Case[Any], response: schemathesis.Response) -> None:
    """A 2xx that fits the spec, or a 4xx in the error envelope."""
    status = response.status_code
    assert 200 <= status < 300 or 400 <= status < 500, (status, response.content[:300])
    if status >= 400:
        assert_error_envelope(response)
    elif content_type(response).startswith("text/event-stream"):
        assert_events_fit(response, case.operation.path)
    elif isinstance(case.body, dict) and case.body.get("encoding_format") == "base64":
        assert_packed_embeddings_fit(response)
    else:
        assert content_type(response) == "application/json"
        # Looked up once a schema is loaded: the registry behind ``schemathesis.checks`` is filled then.
        case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])


def assert_packed_embeddings_fit(response: schemathesis.Response) -> None:
    """Embeddings asked as base64 are packed float32 strings, as OpenAI answers them, where the spec has only
    the float arrays: unpacked, the answer fits the spec."""
    answer = json.loads(response.content)
    for item in answer["data"]:
        packed = base64.b64decode(item["embedding"], validate=True)
        item["embedding"] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    found = [error.message for error in validator("CreateEmbeddingResponse").iter_errors(answer)]
    assert not found, found[:3]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzzed_requests_get_a_fitting_2xx_or_a_4xx_envelope(
    base_url: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = spec_schema()[path][method]
    statuses: Counter[int] = Counter()

    with requests.Session() as session:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: a failing case is reported as sent, at once
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        )
        @given(case=operation.as_strategy(generation_mode=mode), how=st.sampled_from(STEERING))
        def fuzz(case: schemathesis.Case[Any], how: str) -> None:
            if how != "as-made":
                steer(case, how)
            response = case.call(base_url=base_url + "/v1", session=session, timeout=10)
            statuses[response.status_code // 100 * 100] += 1
            check(case, response)

        fuzz()
    assert set(statuses) <= {200, 400}
    assert sum(statuses.values()) >= EXAMPLES // 2  # the cases were made and sent, not all filtered away
    if mode is GenerationMode.POSITIVE:
        assert statuses[200] > 0  # the steered cases went all the way to an answer
    # The server is still up and answering.
    assert httpx.get(base_url + "/health", timeout=10).json() == {"status": "ok"}


# -- what the fuzzer found, each pinned down -------------------------------------------------------


def test_a_responses_setting_sent_as_null_is_echoed_as_its_default(base_url: str) -> None:
    """``parallel_tool_calls``, ``store`` and ``tool_choice`` sent as null mean their defaults, and the
    ``Response`` says so: the spec allows no null there (it echoed null before)."""
    body = {"model": MODEL, "input": "ping", "parallel_tool_calls": None, "store": None, "tool_choice": None}
    response = httpx.post(base_url + "/v1/responses", json=body, timeout=10)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["parallel_tool_calls"], answer["store"], answer["tool_choice"]) == (True, True, "auto")
    check_schema(answer, "Response")
