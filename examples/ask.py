"""Ask the running example app one question, plain and streamed, and print the answers.

Uses the official ``openai`` SDK when it is installed, plain httpx otherwise.
"""

from __future__ import annotations

import json
import sys

import httpx

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
QUESTION = {"model": "mock-echo", "messages": [{"role": "user", "content": "What can unimw do for my app?"}]}


def main() -> None:
    with httpx.Client(base_url=BASE, timeout=10) as http:
        print("GET  /notes          ->", http.get("/notes").json())
        models = http.get("/v1/models").json()
        print("GET  /v1/models      ->", [m["id"] for m in models["data"]])
        answer = http.post("/v1/chat/completions", json=QUESTION).json()
        print("POST /v1/chat/completions ->", answer["choices"][0]["message"]["content"])
        print("     usage:", answer["usage"])
        print("POST /v1/chat/completions (stream) ->", end=" ")
        with http.stream("POST", "/v1/chat/completions", json={**QUESTION, "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for choice in json.loads(line[6:])["choices"]:
                        print(choice["delta"].get("content") or "", end="", flush=True)
        print()


if __name__ == "__main__":
    main()
