"""The Django door: the OpenAI routes under WSGI (test Client, real wsgiref server) and ASGI (uvicorn).

The client is the official ``openai`` SDK wherever it can be; who is calling
comes from an API key, from a logged-in user (with CSRF), or from the
``IDENTITY`` callable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import Group, User
from django.core.asgi import get_asgi_application
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings

import unimw.django
from tests.django.conftest import PG, PG_MISSING, POLICY
from tests.django.support import (
    ACME_KEY,
    THRIFTY_KEY,
    TIGHT_KEY,
    by_request,
    jsonl_records,
    record_fields,
    row_records,
    write_policy,
    wsgi_server,
)
from tests.servers import serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw.django.models import UsageRecord as Row

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-main", "messages": HI}


@pytest.fixture
def records(upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path) -> Iterator[Path]:
    """The policy written for this test (usage also to JSONL), and empty usage tables."""
    path = tmp_path / "usage.jsonl"
    write_policy(upstream_url, path)
    Row.objects.all().delete()
    User.objects.all().delete()
    Group.objects.all().delete()
    yield path


def _user(name: str, *groups: str, staff: bool = False) -> User:
    user = User.objects.create_user(name, password="pw-" + name, is_staff=staff, is_superuser=staff)
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def _post(client: Client, body: Any, **headers: str) -> Any:
    return client.post("/v1/chat/completions", data=json.dumps(body), content_type="application/json", headers=headers)


def _csrf_token(client: Client) -> str:
    token: str = client.get("/csrf/").json()["token"]
    return token


# ── WSGI: Django's test Client ─────────────────────────────────────────────


def test_api_key_call_needs_no_csrf_and_passes_the_host_middleware(records: Path) -> None:
    client = Client(enforce_csrf_checks=True)
    response = _post(client, CHAT, authorization=f"Bearer {ACME_KEY}")
    assert response.status_code == 200
    assert response["content-type"] == "application/json"
    assert response["x-host-middleware"] == "seen"
    assert response.json()["object"] == "chat.completion"
    unimw.django.flush()
    assert [(r["tenant"], r["end_user"], r["status"]) for r in row_records()] == [("acme", None, "ok")]


def test_no_key_and_no_user_is_a_401_envelope(records: Path) -> None:
    response = _post(Client(), CHAT)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "No API key and no logged-in user. Pass a valid key as 'Authorization: Bearer <key>' or log in.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    models = Client().get("/v1/models")
    assert models.status_code == 401


def test_logged_in_user_needs_the_csrf_token(records: Path) -> None:
    _user("alice")
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password="pw-alice")
    refused = _post(client, CHAT)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    accepted = _post(client, CHAT, x_csrftoken=_csrf_token(client))
    assert accepted.status_code == 200, accepted.content
    listed = client.get("/v1/models")  # a safe method: no token needed
    assert listed.status_code == 200
    assert "gpt-main" in [m["id"] for m in listed.json()["data"]]
    unimw.django.flush()
    assert [(r["tenant"], r["end_user"]) for r in row_records()] == [("web", "alice")]


def test_identity_callable_names_the_users_organisation(records: Path) -> None:
    _user("bob", "globex")
    _user("carol")
    settings = {
        "POLICIES": str(POLICY),
        "PREFIX": "v1",
        "USAGE_MODEL": True,
        "IDENTITY": "tests.django.site:group_identity",
    }
    with override_settings(UNIMW=settings):
        for name in ("bob", "carol"):
            client = Client(enforce_csrf_checks=True)
            assert client.login(username=name, password="pw-" + name)
            assert _post(client, CHAT, x_csrftoken=_csrf_token(client)).status_code == 200
    unimw.django.flush()
    assert [(r["tenant"], r["end_user"]) for r in row_records()] == [("globex", "org-user:bob"), ("web", "carol")]


def test_identity_callable_may_answer_a_tenant_of_the_apps_own(records: Path) -> None:
    _user("dave", "umbrella")  # an organisation the policy does not declare
    settings = {
        "POLICIES": str(POLICY),
        "PREFIX": "v1",
        "USAGE_MODEL": True,
        "IDENTITY": "tests.django.site:org_identity",
    }
    with override_settings(UNIMW=settings):
        client = Client(enforce_csrf_checks=True)
        assert client.login(username="dave", password="pw-dave")
        assert _post(client, CHAT, x_csrftoken=_csrf_token(client)).status_code == 200
    unimw.django.flush()
    assert [(r["tenant"], r["plan"], r["end_user"]) for r in row_records()] == [("umbrella", "pro", "dave")]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_declared_as_anything_but_json_gets_415(
    records: Path, upstream: OpenAIUpstream, content_type: str
) -> None:
    client = Client()
    headers = {"authorization": f"Bearer {ACME_KEY}"}
    data = json.dumps(CHAT)
    refused = client.post("/v1/chat/completions", data=data, content_type=content_type, headers=headers)
    served = client.post("/v1/chat/completions", data=data, content_type="application/vnd.api+json", headers=headers)
    assert (refused.status_code, refused.json()["error"]) == (
        415,
        {
            "message": f"Unsupported Content-Type '{content_type}': the request body must be JSON, "
            "sent as application/json.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unsupported_media_type",
        },
    )
    assert served.status_code == 200
    assert upstream.calls == {"up-main": 1}


def test_the_host_site_and_unknown_gateway_urls(records: Path) -> None:
    client = Client()
    page = client.get("/hello/")
    assert (page.status_code, page.content, page["x-host-middleware"]) == (200, b"hello anonymous", "seen")
    missing = client.get("/v1/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/chat/completions", headers={"authorization": f"Bearer {ACME_KEY}"})
    assert (wrong.status_code, wrong["allow"]) == (405, "POST")
    bad_json = client.post(
        "/v1/chat/completions",
        data=b"{",
        content_type="application/json",
        headers={"authorization": f"Bearer {ACME_KEY}"},
    )
    assert bad_json.status_code == 400


def test_streamed_answer_through_the_test_client(records: Path) -> None:
    response = _post(Client(), {**CHAT, "stream": True}, authorization=f"Bearer {ACME_KEY}")
    assert response.status_code == 200
    assert response["content-type"] == "text/event-stream; charset=utf-8"
    events = b"".join(response.streaming_content).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(event.startswith(b"data: {") for event in events[:-2])


# ── usage rows ─────────────────────────────────────────────────────────────


def _calls_with_sdk(url: str) -> None:
    """Two calls of acme (plan pro) that succeed, tagged by metadata and by header, and one that fails."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=ACME_KEY, max_retries=0, timeout=10)
    client.chat.completions.create(
        model="gpt-main",
        messages=HI,  # type: ignore[arg-type]
        user="u-1",
        metadata={"feature": "search"},
    )
    streamed = client.chat.completions.create(
        model="gpt-main",
        messages=HI,  # type: ignore[arg-type]
        stream=True,
        metadata={"feature": "search"},
        extra_headers={"X-Unimw-Tags": "feature=summary, team=core"},  # the header wins on a shared key
    )
    for _ in streamed:
        pass
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)  # type: ignore[arg-type]


def _rerouted_call(url: str) -> None:
    """Two calls of thrifty (plan saver) to gpt-priced: the first spends past 1% of its budget, so the second
    goes to gpt-backup."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=THRIFTY_KEY, max_retries=0, timeout=10)
    client.chat.completions.create(model="gpt-priced", messages=HI)  # type: ignore[arg-type]
    answer = client.chat.completions.with_raw_response.create(model="gpt-priced", messages=HI)  # type: ignore[arg-type]
    assert answer.headers["x-unimw-rerouted-from"] == "gpt-priced"


@pytest.mark.parametrize("database", ["default", "pg"])
def test_usage_rows_equal_the_jsonl_records(records: Path, database: str) -> None:
    if database == "pg" and not PG:
        if __import__("os").environ.get("CI"):
            pytest.fail(f"CI is set and Postgres is not reachable: {PG_MISSING}")
        print(f"skipping Postgres: {PG_MISSING}")
        pytest.skip(f"Postgres not reachable: {PG_MISSING}")
    Row.objects.using(database).all().delete()
    settings = {"POLICIES": str(POLICY), "PREFIX": "v1", "USAGE_MODEL": True, "USAGE_DATABASE": database}
    with override_settings(UNIMW=settings), wsgi_server() as url:
        _calls_with_sdk(url)
        _rerouted_call(url)
        unimw.django.flush()
    jsonl = jsonl_records(records)
    # an unknown model: no call, no record
    assert [
        (r["tenant"], r["model"], r["stream"], r["status"], r["plan"], r["tags"], r["rerouted_from"]) for r in jsonl
    ] == [
        ("acme", "gpt-main", False, "ok", "pro", {"feature": "search"}, None),
        ("acme", "gpt-main", True, "ok", "pro", {"feature": "summary", "team": "core"}, None),
        ("thrifty", "gpt-priced", False, "ok", "saver", {}, None),
        ("thrifty", "gpt-backup", False, "ok", "saver", {}, "gpt-priced"),
    ]
    assert tuple(jsonl[0]) == record_fields()
    assert tuple(Row.RECORD_FIELDS) == record_fields()
    assert by_request(row_records(database)) == by_request(jsonl)


def test_admin_shows_spend_read_only(records: Path) -> None:
    with wsgi_server() as url:
        _calls_with_sdk(url)
        tight = openai.OpenAI(base_url=url + "/v1", api_key=TIGHT_KEY, max_retries=0, timeout=10)
        tight.chat.completions.create(model="gpt-main", messages=HI)  # type: ignore[arg-type]  # on no plan
        unimw.django.flush()
    _user("admin", staff=True)
    client = Client()
    assert client.login(username="admin", password="pw-admin")
    page = client.get("/admin/unimw/usagerecord/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Spend of the records shown: 3 calls" in text
    day = Row.objects.get(stream=True).at.date().isoformat()
    assert (
        f"<tr><td>{day}</td><td>acme</td><td>gpt-main</td>\n        <td>2</td>" in text
    )  # one row: day, tenant, model
    assert text.count('<td class="field-plan">pro</td>') == 2
    assert '<a href="?plan=pro">pro</a>' in text  # the plan filter offers the plans of the records
    assert '<a href="?plan__isnull=True">-</a>' in text  # and calls on no plan
    filtered = client.get("/admin/unimw/usagerecord/", {"stream__exact": "1"})
    assert "Spend of the records shown: 1 calls" in filtered.content.decode()
    on_pro = client.get("/admin/unimw/usagerecord/", {"plan": "pro"}).content.decode()
    assert "Spend of the records shown: 2 calls" in on_pro
    on_none = client.get("/admin/unimw/usagerecord/", {"plan__isnull": "True"}).content.decode()
    assert "Spend of the records shown: 1 calls" in on_none
    assert client.get("/admin/unimw/usagerecord/add/").status_code == 403
    row = Row.objects.first()
    assert row is not None
    detail = client.get(f"/admin/unimw/usagerecord/{row.pk}/change/")
    assert detail.status_code == 200  # viewable, with no save button
    assert b'name="_save"' not in detail.content


# ── the SDK over real sockets: WSGI and ASGI ──────────────────────────────


@pytest.fixture(params=["wsgi", "asgi"])
def server(request: pytest.FixtureRequest, records: Path) -> Iterator[str]:
    if request.param == "wsgi":
        with wsgi_server() as url:
            yield url
    else:
        with serve(unimw.django.lifespan(get_asgi_application()), lifespan="on") as url:  # type: ignore[arg-type]
            yield url
        assert sys.modules["unimw.django.runtime"]._current is None  # closed by the lifespan shutdown


def test_sdk_plain_streamed_and_errors(server: str, records: Path) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key=ACME_KEY, max_retries=0, timeout=10)
    answer = client.chat.completions.create(model="gpt-main", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    chunks: list[Any] = list(client.chat.completions.create(model="gpt-main", messages=HI, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert {"gpt-main", "smart"} <= {m.id for m in client.models.list()}
    assert client.models.retrieve("gpt-main").id == "gpt-main"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-main", messages="hi")  # type: ignore[arg-type]
    assert bad.value.param == "messages"
    tight = openai.OpenAI(base_url=server + "/v1", api_key=TIGHT_KEY, max_retries=0, timeout=10)
    tight.chat.completions.create(model="gpt-main", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as limited:
        tight.chat.completions.create(model="gpt-main", messages=HI)  # type: ignore[arg-type]
    headers = limited.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "retry-after" in headers
    nobody = httpx.post(server + "/v1/chat/completions", json=CHAT, timeout=10)
    assert nobody.status_code == 401
    assert nobody.json()["error"]["code"] == "invalid_api_key"


def test_client_leaving_mid_stream_is_settled_once(
    server: str, records: Path, upstream: OpenAIUpstream, request: pytest.FixtureRequest
) -> None:
    upstream.plan("up-main", "slow")  # 0.2 s between words: the whole answer would take about 2 s
    body = {**CHAT, "stream": True}
    headers = {"authorization": f"Bearer {ACME_KEY}"}
    with (
        httpx.Client(base_url=server, timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events == 3:  # the role chunk and two words: the rest is still upstream
                break
    deadline = time.monotonic() + 5
    while not jsonl_records(records) and time.monotonic() < deadline:
        time.sleep(0.02)
    unimw.django.flush()
    time.sleep(0)  # nothing more may arrive: a second settlement would be a second record
    [record] = jsonl_records(records)
    assert record["status"] == "cancelled"
    # What was produced before the client left, not the whole answer (12 tokens). A WSGI server learns that
    # the client left only when a write fails: the second write after the close, so up to two chunks later.
    assert record["output_tokens"] <= (4 if request.node.callspec.params["server"] == "asgi" else 6)
    assert [r["request_id"] for r in row_records()] == [record["request_id"]]


# ── management commands ───────────────────────────────────────────────────


def test_management_commands_wrap_the_cli(records: Path) -> None:
    out = StringIO()
    call_command("unimw_check", stdout=out)
    assert out.getvalue().startswith(f"{POLICY}: OK\n")
    out = StringIO()
    call_command("unimw_usage", "--tenant", "tight", stdout=out)
    assert out.getvalue().splitlines() == [
        "tight",
        "  requests per minute  used              0  of              1  remaining 1",
    ]


def test_usage_command_reports_an_undeclared_tenant_on_a_plan_as_json(records: Path) -> None:
    out = StringIO()
    call_command("unimw_usage", "--tenant", "newco", "--plan", "saver", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {
        "tenants": [
            {
                "tenant": "newco",
                "plan": "saver",
                "limits": [{"quantity": "usd", "per": "day", "used": 0.0, "limit": 1.0, "remaining": 1.0}],
            }
        ]
    }
    out = StringIO()
    call_command("unimw_usage", "--tenant", "newco", "--plan", "saver", stdout=out)
    assert out.getvalue().splitlines()[0] == "newco (plan saver)"


def test_usage_command_refuses_what_the_cli_refuses(records: Path) -> None:
    err = StringIO()
    with pytest.raises(CommandError) as unknown:
        call_command("unimw_usage", "--tenant", "newco", stdout=StringIO(), stderr=err)
    assert unknown.value.returncode == 1
    assert err.getvalue() == (
        f"error: {POLICY}: no tenant 'newco', and no tenancy.default_plan to give it limits: name one with --plan\n"
    )
    with pytest.raises(CommandError) as no_tenant:
        call_command("unimw_usage", "--plan", "saver", stdout=StringIO(), stderr=StringIO())
    assert (no_tenant.value.returncode, str(no_tenant.value)) == (2, "--plan needs --tenant")
