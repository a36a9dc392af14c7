"""Gemini candidates in OpenAI terms: parts, finish reasons, logprobs, usage, and a candidate as stream chunks.

:func:`~unimw.adapters.gemini.from_response` and
:func:`~unimw.adapters.gemini.from_events` are built on these.

Candidates → choices; text → ``content``; ``thought`` parts →
``reasoning_content``, never ``content``; ``functionCall`` → ``tool_calls``
(ids from :func:`~unimw.adapters.gemini_thinking.tool_call_id`);
``finishReason`` STOP → stop (tool_calls when the model called a function),
MAX_TOKENS → length, SAFETY, RECITATION, LANGUAGE, BLOCKLIST,
PROHIBITED_CONTENT, SPII, IMAGE_* and a blocked prompt → content_filter,
anything else → stop; ``logprobsResult`` → ``logprobs``; ``usageMetadata`` →
usage with OpenAI meanings (prompt includes tool-use prompt tokens,
completion includes thoughts; cached and reasoning token details).

Not carried: code execution parts and media in answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from unimw.adapters.gemini_thinking import tool_call_id
from unimw.adapters.openai_shapes import check_delta
from unimw.wire import JSON, chunk, completion_id, dumps, usage

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        (
            "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER", "MODEL_ARMOR",
        ),
        "content_filter",
    ),
}  # fmt: skip


def finish_reason(reason: str | None, called: bool) -> str:
    """The OpenAI ``finish_reason`` for a Gemini ``finishReason``."""
    if called and reason in (None, "STOP"):
        return "tool_calls"  # Gemini ends a function-calling turn with STOP
    return _FINISH.get(reason or "STOP", "stop")


def to_usage(meta: JSON) -> JSON:
    """OpenAI usage from ``usageMetadata``: prompt includes tool-use prompt tokens, completion includes thoughts."""
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    out = usage(
        prompt,
        completion,
        prompt_tokens_details={"cached_tokens": int(meta.get("cachedContentTokenCount") or 0)},
        completion_tokens_details={"reasoning_tokens": thoughts},
    )
    if meta.get("totalTokenCount") is not None:
        out["total_tokens"] = int(meta["totalTokenCount"])
    return out


def read_parts(
    candidate: JSON, response_id: str | None, index: int, first_call: int
) -> tuple[list[str], list[str], list[JSON]]:
    """``(texts, thoughts, tool calls)`` from a candidate's parts; call positions count from ``first_call``."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if isinstance(call := part.get("functionCall"), dict):
            call_id = tool_call_id(call, part.get("thoughtSignature"), response_id, index, first_call + len(calls))
            arguments = dumps(call.get("args") or {}).decode()
            calls.append(
                {"id": call_id, "type": "function", "function": {"name": call.get("name"), "arguments": arguments}}
            )
        elif isinstance(text := part.get("text"), str) and text:
            (thoughts if part.get("thought") else texts).append(text)
        # executableCode, codeExecutionResult and media have no place in a chat message.
    return texts, thoughts, calls


def to_logprobs(candidate: JSON) -> JSON | None:
    """OpenAI ``logprobs`` from a candidate's ``logprobsResult``, if it has one."""
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result.get("chosenCandidates") or ()):
        alternatives = tops[i].get("candidates") or [] if i < len(tops) else []
        content.append({**_token(chosen), "top_logprobs": [_token(a) for a in alternatives]})
    return {"content": content, "refusal": None}


def _token(candidate: JSON) -> JSON:
    token = str(candidate.get("token", ""))
    return {"token": token, "logprob": float(candidate.get("logProbability", 0.0)), "bytes": list(token.encode())}


def blocked(body: JSON) -> str | None:
    """``content_filter`` when the prompt itself was blocked."""
    return "content_filter" if (body.get("promptFeedback") or {}).get("blockReason") else None


def completion_id_for(body: JSON) -> str:
    """The completion id for a response: its ``responseId``, or a new one."""
    return "chatcmpl-" + body["responseId"] if body.get("responseId") else completion_id()


def candidate_chunks(
    candidate: JSON, index: int, response_id: str | None, calls: dict[int, int], head: tuple[str, str, int]
) -> Iterable[JSON]:
    """The chunks for one streamed candidate: its new parts as a delta, then its finish reason."""
    delta: JSON = {} if index in calls else {"role": "assistant"}
    first_call = calls.setdefault(index, 0)
    texts, thoughts, tool_calls = read_parts(candidate, response_id, index, first_call)
    if thoughts:
        delta["reasoning_content"] = "".join(thoughts)
    if texts:
        delta["content"] = "".join(texts)
    if tool_calls:
        delta["tool_calls"] = [{"index": first_call + k, **call} for k, call in enumerate(tool_calls)]
        calls[index] = first_call + len(tool_calls)
    if delta:
        out = chunk(*head, check_delta(delta), index=index)  # a tool's name that is not text: a 502
        out["choices"][0]["logprobs"] = to_logprobs(candidate)
        yield out
    if reason := candidate.get("finishReason"):
        yield chunk(*head, finish_reason=finish_reason(reason, calls[index] > 0), index=index)
