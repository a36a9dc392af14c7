"""What each operation costs in process against Chat Completions, on the same policy, measured in one run.

    python -m bench.operations            # a few seconds
    python -m bench.operations --quick    # tiny counts

All three run through ``Gateway.handle`` on the offline mock provider, so the
figures are the pipeline's and the operation's own work: a Chat Completions
call; the same question as a Responses call, which the mock (a chat-only
target) gets translated to Chat Completions and back, plain and streamed
(with its store kept, as by default); and an embeddings call for one input.
Interleaved rounds; p50 over all calls.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.measure import Plan, Stats, contest
from unimw import CallStream, Gateway, Inbound
from unimw.operations import CHAT, EMBEDDINGS, RESPONSES

POLICY: dict[str, Any] = {
    "providers": {"mock": {"kind": "mock"}},
    "models": {"mock-echo": {"provider": "mock", "model": "mock-echo"}},
}
QUESTION = "What is the capital of France?"
CALLER = Inbound()


async def measure(plan: Plan) -> dict[str, dict[str, Stats]]:
    async with Gateway.from_dict(POLICY) as gateway:
        operations = gateway.operations
        chat, responses, embeddings = (operations[op.path] for op in (CHAT, RESPONSES, EMBEDDINGS))

        def call(operation: Any, body: dict[str, Any]) -> Any:
            async def run() -> None:
                answer = await gateway.handle(operation, dict(body), CALLER)
                if isinstance(answer.body, CallStream):
                    async for _ in answer.body:
                        pass

            return run

        chat_body = {"model": "mock-echo", "messages": [{"role": "user", "content": QUESTION}]}
        responses_body = {"model": "mock-echo", "input": QUESTION}
        results = {
            "plain": await contest(
                {
                    "chat": call(chat, chat_body),
                    "responses": call(responses, responses_body),
                    "embeddings": call(embeddings, {"model": "mock-echo", "input": QUESTION}),
                },
                plan,
            ),
            "stream": await contest(
                {
                    "chat": call(chat, {**chat_body, "stream": True}),
                    "responses": call(responses, {**responses_body, "stream": True}),
                },
                plan,
            ),
        }
    return results


def report(results: dict[str, dict[str, Stats]]) -> str:
    lines = ["per call, in process on the mock provider, p50 over all calls, against a chat call of the same kind:"]
    for kind, stats in results.items():
        base = stats["chat"].p50
        for name, stat in stats.items():
            added = "" if name == "chat" else f"   added {stat.p50 - base:+8.1f} µs"
            lines.append(f"  {kind:<7} {name:<11} {stat.p50:8.1f} µs{added}   (n={stat.n})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operations", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    args = parser.parse_args(argv)
    plan = (
        Plan(rounds=2, count=20, warmup=5, seconds=2)
        if args.quick
        else Plan(rounds=6, count=2000, warmup=300, seconds=5)
    )
    print(report(asyncio.run(measure(plan))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
