"""One gateway call from start to finish, and the stream that finishes it.

A :class:`Call` carries what the steps learn about a call (who, which
route, the reservation, the target that answered, the usage). Its
``finish`` hook (the Gateway's) settles, records and traces it; a call is
finished exactly once, however it ends. :class:`ChunkStream` is how a
streamed call ends: on its last chunk, on an error mid-stream, or when the
reader goes away (``aclose``), even if it never read a chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from unimw.adapters.base import Target
from unimw.cache import Lookup
from unimw.errors import UnimwError
from unimw.limits import Hold
from unimw.routing import Route
from unimw.streams import Assembler
from unimw.tenants import Caller
from unimw.usage import Usage, estimate_prompt_tokens, estimate_text_tokens
from unimw.wire import JSON


@dataclass(slots=True)
class Call:
    """The state of one call as it moves through the pipeline."""

    request_id: str
    caller: Caller
    request: JSON
    route: Route | None = None
    stream: bool = False
    hold: Hold | None = None
    target: Target | None = None
    usage: Usage | None = None
    #: True once the upstream produced output the caller is charged for.
    answered: bool = False
    status: str = "ok"
    #: Past the limits (refused calls are traced but not recorded as usage).
    admitted: bool = False
    error: BaseException | None = None
    started: float = field(default_factory=time.perf_counter)
    first_chunk_at: float | None = None
    finish_reasons: list[str] = field(default_factory=list)
    response_id: str | None = None
    response_model: str | None = None
    span: Any = None
    finished: bool = False
    cache: Lookup | None = None
    cache_hit: bool = False
    #: The whole answer, when there is one to store (a stream's is assembled).
    completion: JSON | None = None

    def observe_completion(self, completion: JSON) -> None:
        self.answered = True
        self.completion = completion
        # A compatible server may leave usage out: then it is estimated from what came back.
        self.usage = Usage.from_openai(completion.get("usage")) or self.estimate(_output_text(completion))
        self.response_id = completion.get("id")
        self.response_model = completion.get("model")
        self.finish_reasons = [str(c.get("finish_reason")) for c in completion.get("choices") or ()]

    def estimate(self, produced: str) -> Usage:
        """Usage the vendor never reported: the prompt estimate plus the output seen."""
        return Usage(estimate_prompt_tokens(self.request), estimate_text_tokens(produced))


def _output_text(completion: JSON) -> str:
    parts: list[str] = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        parts.append(str(message.get("content") or ""))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(str(function.get("name") or "") + str(function.get("arguments") or ""))
    return "".join(parts)


Finish = Callable[[Call], Awaitable[None]]


class ChunkStream:
    """The chunks of a streamed call; finishes the call however iteration ends.

    It watches the chunks go by for the usage chunk (dropping it when the
    client did not ask for one: the gateway always asks upstream, so that
    streamed calls are charged what they used) and for the text produced,
    which is what a cut-short stream is charged for.
    """

    def __init__(
        self,
        call: Call,
        chunks: AsyncIterator[JSON],
        finish: Finish,
        *,
        client_wants_usage: bool,
        assemble: bool = False,
    ) -> None:
        self.call = call
        self._assembler = Assembler() if assemble else None
        self._chunks = chunks
        self._finish = finish
        self._client_wants_usage = client_wants_usage
        self._produced: list[str] = []
        self._done = False

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> JSON:
        if self._done:
            raise StopAsyncIteration
        try:
            while True:
                chunk = await anext(self._chunks)
                if self._observe(chunk):
                    return chunk
        except StopAsyncIteration:
            await self._end("ok", None)
            raise
        except UnimwError as error:
            await self._end("error", error)
            raise
        except BaseException as error:  # cancelled, or a bug: still settle what was produced
            await self._end("cancelled" if isinstance(error, asyncio.CancelledError) else "error", error)
            raise

    def _observe(self, chunk: JSON) -> bool:
        """Note what ``chunk`` says; False if it is not for the client."""
        call = self.call
        if self._assembler is not None:
            self._assembler.add(chunk)
        if call.first_chunk_at is None:
            call.first_chunk_at = time.perf_counter()
            call.response_id = chunk.get("id")
            call.response_model = chunk.get("model")
        if (usage := Usage.from_openai(chunk.get("usage"))) is not None:
            call.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self._produced.append(content)
            for tool_call in delta.get("tool_calls") or ():
                function = tool_call.get("function") or {}
                self._produced.append((function.get("name") or "") + (function.get("arguments") or ""))
            if reason := choice.get("finish_reason"):
                call.finish_reasons.append(str(reason))
        if not self._client_wants_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return False
            del chunk["usage"]
        return True

    async def _end(self, status: str, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        call = self.call
        call.status = status
        call.error = error
        if not call.cache_hit:
            call.answered = True  # the first chunk reached the caller: the prompt was used
        if call.usage is None or status != "ok":
            call.usage = call.usage or call.estimate("".join(self._produced))
        if status == "ok" and self._assembler is not None and self._assembler.complete:
            call.completion = self._assembler.completion()
        aclose = getattr(self._chunks, "aclose", None)
        try:
            if aclose is not None and status != "ok":
                await aclose()
        finally:
            # Shielded: a cancelled reader must not cancel the settling too.
            await asyncio.shield(self._finish(call))

    async def aclose(self) -> None:
        """Stop reading (the client left): close the upstream and finish the call."""
        if not self._done:
            await self._end("cancelled", None)
