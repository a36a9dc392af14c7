"""OpenAI's Responses API (``POST /v1/responses``) for the loopback OpenAI-wire server.

Deterministic, in the documented wire format: a text answer as one
``message`` output item, streamed as named SSE events with increasing
``sequence_number`` and no ``[DONE]``. It reads no stored state: it answers
only what the request carries, as a server called with ``store: false``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.upstreams import ScriptedUpstream, full

CREATED = 1741570283


def response(body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    text = full(body["model"])
    items = body["input"] if isinstance(body["input"], list) else [body["input"]]
    message = {
        "id": "msg_loopback0001",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    return {
        "id": "resp_loopback0001",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": body["model"],
        "output": [message] if status == "completed" else [],
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        # Function tools come back with every field the spec's FunctionTool requires.
        "tools": [{"strict": None, "parameters": None, **tool} for tool in body.get("tools") or []],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "metadata": body.get("metadata") or {},
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "store": body.get("store", True),
        "truncation": "disabled",
        "usage": {
            "input_tokens": len(json.dumps(items)) // 4,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(text) // 4,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": len(json.dumps(items)) // 4 + len(text) // 4,
        },
    }


async def answer(upstream: ScriptedUpstream, request: Request) -> Response:
    body = await request.json()
    name, _ = upstream.received(str(body.get("model")), body, request)
    if not body.get("stream"):
        return JSONResponse(response(body))
    return StreamingResponse(_events(body, drop=name == "drop"), media_type="text/event-stream")


async def _events(body: dict[str, Any], *, drop: bool = False) -> AsyncIterator[bytes]:
    """The stream of ``body``'s answer; ``drop``: the connection breaks after the first 3 words."""
    final = response(body)
    head = response(body, status="in_progress")
    message = final["output"][0]
    text = message["content"][0]["text"]
    words = text.split(" ")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": head},
        {"type": "response.in_progress", "response": head},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "item_id": message["id"], "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}},
        *({"type": "response.output_text.delta", "item_id": message["id"], "output_index": 0, "content_index": 0,
           "delta": word if i == 0 else " " + word, "logprobs": []} for i, word in enumerate(words)),
        {"type": "response.output_text.done", "item_id": message["id"], "output_index": 0, "content_index": 0,
         "text": text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": message["id"], "output_index": 0, "content_index": 0,
         "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    for number, event in enumerate(events):
        if drop and event["type"] == "response.output_text.delta" and event["delta"] == " " + words[3]:
            raise ConnectionResetError("dropped mid-stream")
        yield f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': number})}\n\n".encode()
