"""Agent frameworks on ``/v1/responses`` with a Messages API model behind it.

The openai-agents SDK (its default model, the Responses API) and LangChain's
``ChatOpenAI`` with ``use_responses_api`` call the gateway in process, as an
application would; the gateway translates to the Anthropic-wire loopback
server. Each client records the bodies it sends, so the tests also pin how a
framework carries a conversation: whole history or ``previous_response_id``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.conftest import sdk_http
from tests.upstreams.anthropic_app import AnthropicUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
KEY = "sk-frameworks-0001"
PARIS = f"Hello from {SONNET}! The capital of France is Paris."
WAIT = 10  # seconds: a bound on each framework run, far above what one takes
QUESTION = "What's the weather in Paris?"
#: What the Messages API gets on the agent's second turn, however the SDK carried the conversation.
CONVERSATION = [
    {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_00get_weather", "name": "get_weather", "input": {"city": "Paris"}}
        ],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_00get_weather", "content": "21 degrees and sunny"}],
    },
]


def policy(anthropic_url: str) -> dict[str, Any]:
    return {
        "providers": {"claude": {"kind": "anthropic", "base_url": anthropic_url, "api_key": "sk-ant-k", "timeout": 5}},
        "models": {"sonnet": {"provider": "claude", "model": SONNET}},
        "dispatch": {"retries": 0, "cooldown": 0},
    }


@dataclass
class Door:
    """An HTTP client on the gateway, and the Responses bodies the framework sent through it."""

    http: httpx.AsyncClient
    sent: list[dict[str, Any]] = field(default_factory=list)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key=KEY, http_client=sdk_http(self.http), max_retries=0
        )


@pytest.fixture
async def door(_anthropic_server: tuple[AnthropicUpstream, str]) -> AsyncIterator[Door]:
    """A gateway on the Anthropic loopback and a client on it; both closed after the test."""
    sent: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        if request.url.path == "/v1/responses":
            sent.append(json.loads(await request.aread()))

    async with Gateway.from_dict(policy(_anthropic_server[1])) as gateway:
        transport = gateway.transport()
        async with httpx.AsyncClient(transport=transport, event_hooks={"request": [record]}) as http:
            yield Door(http, sent)


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Neither framework exports traces anywhere while a test runs."""
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


def weather_agent(door: Door, asked: list[str]) -> Agent[None]:
    """An agent on unimw's ``sonnet`` whose one tool records the cities it is asked about."""

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return "21 degrees and sunny"

    model = OpenAIResponsesModel(model="sonnet", openai_client=door.openai())
    return Agent(name="weather", instructions="Answer briefly.", tools=[get_weather], model=model)


@pytest.mark.usefixtures("quiet")
async def test_an_agent_calls_its_tool_and_answers_with_the_whole_history(
    door: Door, claude: AnthropicUpstream
) -> None:
    asked: list[str] = []
    with anyio.fail_after(WAIT):
        result = await Runner.run(weather_agent(door, asked), QUESTION, max_turns=3)
    assert asked == ["Paris"]
    assert result.final_output == f"I got 1 tool results for {SONNET}."
    assert claude.calls[SONNET] == 2
    assert claude.requests[1]["messages"] == CONVERSATION
    # The SDK keeps the conversation itself: the second call repeats every item, chaining nothing.
    assert [sorted(body.keys() & {"previous_response_id", "store"}) for body in door.sent] == [[], []]
    second = door.sent[1]["input"]
    assert [item.get("type", "message") for item in second] == ["message", "function_call", "function_call_output"]
    assert second[2] == {
        "call_id": second[1]["call_id"],
        "output": "21 degrees and sunny",
        "type": "function_call_output",
    }


@pytest.mark.usefixtures("quiet")
async def test_an_agent_chains_on_unimw_stored_responses(door: Door, claude: AnthropicUpstream) -> None:
    asked: list[str] = []
    with anyio.fail_after(WAIT):
        result = await Runner.run(
            weather_agent(door, asked),
            QUESTION,
            max_turns=3,
            auto_previous_response_id=True,
        )
    assert (asked, result.final_output) == (["Paris"], f"I got 1 tool results for {SONNET}.")
    assert claude.calls[SONNET] == 2
    # The second call sends only the tool's output and the first answer's id: unimw's store has the rest.
    first_id = result.raw_responses[0].response_id
    assert door.sent[1]["previous_response_id"] == first_id
    assert [item["type"] for item in door.sent[1]["input"]] == ["function_call_output"]
    assert claude.requests[1]["messages"] == CONVERSATION


@pytest.mark.usefixtures("quiet")
async def test_a_streamed_agent_run_gets_the_same_answer(door: Door, claude: AnthropicUpstream) -> None:
    asked: list[str] = []
    with anyio.fail_after(WAIT):
        run = Runner.run_streamed(weather_agent(door, asked), QUESTION, max_turns=3)
        kinds = [event.type async for event in run.stream_events()]
    assert (asked, run.final_output) == (["Paris"], f"I got 1 tool results for {SONNET}.")
    assert [body.get("stream") for body in door.sent] == [True, True]
    assert [request["stream"] for request in claude.requests] == [True, True]
    assert kinds.count("raw_response_event") > 2 and kinds.count("run_item_stream_event") == 3  # call, output, answer


def chat_model(door: Door) -> ChatOpenAI:
    """LangChain's OpenAI chat model on unimw's ``sonnet``, on the Responses API."""
    return ChatOpenAI(
        model="sonnet",
        use_responses_api=True,
        base_url="http://unimw/v1",
        api_key=SecretStr(KEY),
        http_async_client=door.http,
        max_retries=0,
        timeout=5,
    )


@pytest.mark.usefixtures("quiet")
async def test_langchain_invokes_and_streams(door: Door, claude: AnthropicUpstream) -> None:
    llm = chat_model(door)
    with anyio.fail_after(WAIT):
        whole = await llm.ainvoke("What is the capital of France?")
        chunks = [chunk async for chunk in llm.astream("What is the capital of France?")]
    assert whole.text == PARIS
    assert len(chunks) > 2  # the answer came in pieces, a word a delta
    assert "".join(chunk.text for chunk in chunks) == PARIS
    assert claude.calls[SONNET] == 2 and claude.requests[1]["stream"] is True


@pytest.mark.usefixtures("quiet")
async def test_langchain_bound_tools_give_a_tool_call(door: Door, claude: AnthropicUpstream) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "21 degrees and sunny"

    llm = chat_model(door).bind_tools([get_weather])
    with anyio.fail_after(WAIT):
        message = await llm.ainvoke(QUESTION)
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert [tool["name"] for tool in claude.requests[0]["tools"]] == ["get_weather"]
    assert door.sent[0]["tools"][0]["type"] == "function"
