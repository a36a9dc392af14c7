"""What ``providers.<name>.options`` may hold, per provider kind.

The policy keeps a provider's options as a plain mapping, because what they
mean is each adapter's business; these models are how the loader checks
them (and the JSON Schema describes them). They are plain data and import
no adapter, so checking a policy never loads a vendor's module.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from unimw.policy import Seconds, duration_field


def _text(value: Any) -> Any:
    # An unquoted 2024-10-21 is a date to YAML; the adapter wants the text as written.
    return value.isoformat() if isinstance(value, datetime.date) else value


#: A string; a YAML date is taken as the date it spells.
Text = Annotated[str, BeforeValidator(_text)]


class Options(BaseModel):
    """The options of one kind: unknown keys are the loader's to refuse, with the ones the kind takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class AzureDeployment(Options):
    """Azure OpenAI's classic deployments API."""

    api_version: Text | None = Field(
        default=None,
        description="The api-version query parameter (e.g. 2024-10-21); with it, calls go to "
        "{base_url}/deployments/{deployment}/chat/completions.",
    )
    deployment: Text | None = Field(
        default=None,
        description="The deployment every model of this provider goes to; unset: each model's model id.",
    )


AZURE_SHAPE = "the azure option must be true or a mapping with api_version and/or deployment"


class OpenAIOptions(Options):
    """Options of kind: openai."""

    azure: AzureDeployment | bool = Field(
        default=False,
        description="Azure OpenAI: the key goes in the api-key header. true for the v1 endpoint "
        "(base_url …/openai/v1), or a mapping with api_version (and deployment) for the "
        "deployments API.",
    )
    responses: bool | None = Field(
        default=None,
        description="Whether this server speaks the Responses API (POST /responses): /v1/responses calls are then "
        "passed to it natively, else translated to chat completions. Unset: only OpenAI's own endpoint does.",
    )

    @field_validator("azure", mode="before")
    @classmethod
    def _azure_shape(cls, value: Any) -> Any:
        # One message for every wrong shape, rather than one per member of the union.
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, Mapping) and set(value) <= {"api_version", "deployment"}:
            return value
        raise ValueError(AZURE_SHAPE)


class AnthropicOptions(Options):
    """Options of kind: anthropic."""

    anthropic_version: Text | None = Field(
        default=None,
        description="The anthropic-version header; unset: the adapter's default (2026-10-21).",
    )
    default_max_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Output tokens asked for when a request sets no cap (the Messages API requires one); unset: 4096.",
    )


#: The thinking levels the Gemini adapter knows, lowest first.
ThinkingLevel = Literal["minimal", "low", "medium", "high", "xhigh"]


class GeminiOptions(Options):
    """Options of kind: gemini."""

    thinking_levels: dict[str, list[ThinkingLevel]] = Field(
        default={},
        description="Model-id prefix → the thinking levels those models accept (the longest matching prefix "
        "wins), merged over the adapter's built-in table.",
    )
    include_thoughts: bool = Field(default=False, description="Ask for thought summaries on every call.")


class MockOptions(Options):
    """Options of kind: mock."""

    latency: Seconds = duration_field(0.0, "How long the mock waits before answering.")
    chunk_delay: Seconds = duration_field(0.0, "How long the mock waits between streamed chunks.")
