"""The SaaS backend: its own routes for logged-in users, and unimw's ``/v1`` routes for API-key callers.

Run it with ``bash examples/run_saas.sh``, or
``uvicorn --factory examples.saas.app:create_app``: it starts on a fresh
database with a few organisations and prints their API keys, once.

* ``/v1/...`` (unimw, mounted as middleware): programs of the app's customers
  call it with the official openai SDK and a key the app issued; unimw asks
  :func:`examples.saas.keys.lookup` whose key it is.
* ``POST /orgs/{org_id}/summaries``: a feature of the app, calling the gateway
  in process for the logged-in user's organisation.
* ``POST /orgs/{org_id}/keys`` and ``DELETE /orgs/{org_id}/keys/{digest}``:
  issue a key (shown once) and revoke one (refused from that moment on).

Sessions are faked to keep the example short: the ``X-Demo-User`` header
names the logged-in user. A real app reads its session cookie or token in
the same dependency (:func:`member_of`); nothing else changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from examples.saas import db
from examples.saas.keys import identity
from unimw import Gateway, Identity, UnimwError, UnimwMiddleware, hash_key

POLICY = Path(__file__).with_name("policies.yaml")
#: The alias each plan's summaries come from (free organisations may use only the cheap one); others: smart.
SUMMARY_MODEL = {"free": "cheap"}


@dataclass(frozen=True, slots=True)
class Member:
    """The logged-in user, and the organisation they act for."""

    user: str
    org: db.Organisation
    identity: Identity


class SummaryRequest(BaseModel):
    text: str


class Summary(BaseModel):
    summary: str
    model: str


class IssuedKey(BaseModel):
    key: str  #: shown this once: the database keeps only the digest
    digest: str


class RevokedKey(BaseModel):
    digest: str
    forgotten: bool  #: whether unimw held a cached answer for it, now dropped


def database_of(request: Request) -> db.Database:
    database: db.Database = request.app.state.database
    return database


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def member_of(
    org_id: str,
    database: Annotated[db.Database, Depends(database_of)],
    x_demo_user: Annotated[str | None, Header()] = None,
) -> Member:
    """The logged-in user, if they belong to the organisation in the path (the fake session: X-Demo-User)."""
    org = database.user_organisation(x_demo_user) if x_demo_user else None
    if x_demo_user is None or org is None:
        raise HTTPException(401, "Log in first (here: an X-Demo-User header naming a user).")
    if org.id != org_id:
        raise HTTPException(403, f"{x_demo_user} is not a member of {org_id}.")
    return Member(x_demo_user, org, identity(org, database.provider_keys(org.id)))


router = APIRouter()


@router.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@router.post("/orgs/{org_id}/summaries")
async def summarise(
    body: SummaryRequest,
    member: Annotated[Member, Depends(member_of)],
    gateway: Annotated[Gateway, Depends(gateway_of)],
) -> Summary:
    """Summarise a text for the user's organisation: its plan's limits, its budget, its usage records."""
    completion = await gateway.chat_completions(
        {
            "model": SUMMARY_MODEL.get(member.org.plan, "smart"),
            "messages": [
                {"role": "system", "content": "Summarise the user's text in one sentence."},
                {"role": "user", "content": body.text},
            ],
            "metadata": {"feature": "summaries"},  # a tag: on the usage record, the span and the cost metric
        },
        tenant=member.identity,
        end_user=member.user,  # an id, not an email: records and spans carry it
    )
    return Summary(summary=completion["choices"][0]["message"]["content"], model=completion["model"])


@router.post("/orgs/{org_id}/keys", status_code=201)
def issue_key(
    member: Annotated[Member, Depends(member_of)], database: Annotated[db.Database, Depends(database_of)]
) -> IssuedKey:
    key = database.issue_key(member.org.id)
    return IssuedKey(key=key, digest=hash_key(key))


@router.delete("/orgs/{org_id}/keys/{digest}")
def revoke_key(
    digest: str,
    member: Annotated[Member, Depends(member_of)],
    database: Annotated[db.Database, Depends(database_of)],
    gateway: Annotated[Gateway, Depends(gateway_of)],
) -> RevokedKey:
    """Revoke a key now: marked in the table, and dropped from what unimw remembers (else it works up to ttl)."""
    if not database.revoke(member.org.id, digest):
        raise HTTPException(404, "No such live key in this organisation.")
    return RevokedKey(digest=digest, forgotten=gateway.forget_key(digest))


async def gateway_error(request: Request, error: Exception) -> JSONResponse:
    """A refusal of the gateway (429, 403, 503, ...) from the app's own routes, in the OpenAI error envelope."""
    assert isinstance(error, UnimwError)
    return JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)


def create_app(database: db.Database | None = None, *, usage_path: str | os.PathLike[str] | None = None) -> FastAPI:
    """The app on ``database``; without one, on a fresh seeded database in a temporary folder (its keys printed).

    ``usage_path`` is where usage records go (else ``SAAS_USAGE``, else ``usage.jsonl``).
    """
    scratch = None
    if database is None:
        scratch = Path(tempfile.mkdtemp(prefix="unimw-saas-"))
        database = db.Database(scratch / "saas.sqlite3")
        print("API keys (shown once; the database keeps only their sha256):", flush=True)
        for org_id, key in database.seed().items():
            print(f"  {org_id:<9} {key}", flush=True)
    db.use(database)
    env = {**os.environ, "SAAS_USAGE": str(usage_path)} if usage_path is not None else None
    gateway = Gateway.from_yaml(POLICY, env=env)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.aclose()  # drains the usage records still queued
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    app = FastAPI(title="SaaS example", lifespan=lifespan)
    app.state.database = database
    app.state.gateway = gateway
    app.include_router(router)
    app.add_exception_handler(UnimwError, gateway_error)
    app.add_middleware(UnimwMiddleware, gateway=gateway)  # /v1/... for API-key callers
    return app
