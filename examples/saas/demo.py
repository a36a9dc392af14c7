"""A scripted tour of the running SaaS example, as its customers and their programs would use it.

``python -m examples.saas.demo http://127.0.0.1:8002`` (``examples/run_saas.sh --once`` runs it). Each
organisation's user issues an API key in the app; the organisation's program then calls ``/v1`` with
the official openai SDK and that key. Last, the app's own summaries feature, and a key revoked.
"""

from __future__ import annotations

import sys

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8002"
#: Each organisation's user (the fake session), and the model its program asks for.
USERS = {"acme": "wile", "globex": "hank", "umbrella": "alice", "initech": "peter"}
MODELS = {"acme": "cheap", "globex": "smart", "umbrella": "smart", "initech": "partner-large"}
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Summarise the meeting notes of Tuesday for the team"}
]


def issue_key(app: httpx.Client, org: str) -> tuple[str, str]:
    """A new key for ``org``, issued in the app by its user: (the key, its digest)."""
    issued = app.post(f"/orgs/{org}/keys", headers={"X-Demo-User": USERS[org]})
    issued.raise_for_status()
    return issued.json()["key"], issued.json()["digest"]


def sdk(key: str) -> openai.OpenAI:
    """An organisation's program: the openai SDK with the app's key, its calls tagged as the public API's."""
    return openai.OpenAI(
        base_url=BASE + "/v1", api_key=key, max_retries=0, default_headers={"X-Unimw-Tags": "feature=api"}
    )


def ask(client: openai.OpenAI, model: str, max_tokens: int | None = None) -> tuple[str, str, str | None]:
    """One call: (the model that answered, the x-unimw-cost header, x-unimw-rerouted-from)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, max_tokens=max_tokens if max_tokens is not None else openai.omit
    )
    return raw.parse().model, raw.headers["x-unimw-cost"], raw.headers.get("x-unimw-rerouted-from")


def main() -> None:
    with httpx.Client(base_url=BASE, timeout=10) as app:
        keys = {org: issue_key(app, org) for org in USERS}
        clients = {org: sdk(key) for org, (key, _) in keys.items()}

        print("One call per plan, with each organisation's key (the openai SDK on /v1):")
        for org in ("acme", "globex", "initech"):
            model, cost, _ = ask(clients[org], MODELS[org])
            print(f"  {org:<9} asked {MODELS[org]:<14} -> {model:<14} x-unimw-cost: {cost} USD")

        print("The free plan allows 3 requests a minute; acme's calls 2 to 4:")
        for n in (2, 3, 4):
            try:
                ask(clients["acme"], "cheap")
                print(f"  call {n}: 200")
            except openai.RateLimitError as refused:
                retry_after = refused.response.headers.get("retry-after")
                print(f"  call {n}: {refused.status_code} {refused.code}, retry-after {retry_after} s")

        print("Umbrella (pro) capped its own monthly spend at $0.005; near 90 % its calls go to the cheap alias:")
        for n in range(1, 11):
            model, cost, rerouted = ask(clients["umbrella"], "smart", max_tokens=40)
            if n == 1 or rerouted:
                print(f"  call {n:>2}: -> {model:<10} {cost} USD" + (f", rerouted from {rerouted}" if rerouted else ""))

        summary = app.post(
            "/orgs/globex/summaries", json={"text": "Q3 revenue grew 12 %."}, headers={"X-Demo-User": "hank"}
        )
        print(f"POST /orgs/globex/summaries as hank (in process, tagged feature=summaries) -> {summary.status_code}")
        print("  ", summary.json())

        _, digest = keys["globex"]
        revoked = app.delete(f"/orgs/globex/keys/{digest}", headers={"X-Demo-User": "hank"})
        print(f"DELETE /orgs/globex/keys/{digest[:15]}... -> {revoked.status_code} {revoked.json()}")
        try:
            ask(clients["globex"], "smart")
            print("  the revoked key still works: this is a bug")
            sys.exit(1)
        except openai.AuthenticationError as refused:
            print(f"  the next call with it: {refused.status_code} {refused.code}")
        for client in clients.values():
            client.close()


if __name__ == "__main__":
    main()
