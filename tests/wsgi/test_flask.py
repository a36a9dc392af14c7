"""The Flask example: unimw mounted by two lines, its own routes untouched, tenants from the Flask session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from examples import flask_app
from tests.conftest import policy_for
from tests.e2e import tenant_hooks
from tests.servers import serve_wsgi
from tests.upstreams.openai_app import OpenAIUpstream
from tests.wsgi.helpers import HELLO, sdk
from unimw import Gateway
from unimw.records import UsageRecord
from unimw.wsgi import UnimwWSGIMiddleware


def test_the_example_answers_from_the_mock_and_keeps_its_own_routes() -> None:
    with serve_wsgi(flask_app.app) as url:
        client = sdk(url)
        completion = client.chat.completions.create(model="mock-echo", messages=HELLO)
        streamed = list(client.chat.completions.create(model="mock-echo", messages=HELLO, stream=True))
        assert completion.choices[0].message.content
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
            completion.choices[0].message.content
        )
        assert "mock-echo" in [m.id for m in client.models.list()]
        with httpx.Client(base_url=url, timeout=10) as http:
            created = http.post("/notes", json={"text": "buy milk"})
            assert (created.status_code, http.get(f"/notes/{created.json()['id']}").json()) == (
                201,
                {"text": "buy milk"},
            )
            assert http.get("/notes/999").status_code == 404  # Flask's own 404 page, not unimw's
            assert "text/html" in http.get("/notes/999").headers["content-type"]


@pytest.fixture
def session_tenants(upstream_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, UnimwWSGIMiddleware]]:
    """The example app, its door on a policy whose tenants come from ``team_from_session``."""
    policy = policy_for(
        upstream_url,
        tenancy={"resolve": [{"callable": "examples.flask_app:team_from_session"}]},
        tenants={"red": {"models": ["mock-echo"]}, "blue": {}},
        usage={"call": "tests.e2e.tenant_hooks:record_usage"},
    )
    flask_wsgi = flask_app.app.wsgi_app.app  # type: ignore[attr-defined]  # Flask's own, behind the example's door
    door = UnimwWSGIMiddleware(flask_wsgi, gateway=Gateway.from_dict(policy))
    monkeypatch.setattr(flask_app.app, "wsgi_app", door)
    tenant_hooks.records.clear()
    try:
        with serve_wsgi(flask_app.app) as url:
            yield url, door
    finally:
        door.run(door.gateway.aclose())


def test_the_tenant_is_the_team_in_the_flask_session(
    session_tenants: tuple[str, UnimwWSGIMiddleware], upstream: OpenAIUpstream
) -> None:
    url, door = session_tenants
    with pytest.raises(openai.AuthenticationError):
        sdk(url).chat.completions.create(model="mock-echo", messages=HELLO)  # not signed in
    cookies = {}
    for team in ("red", "blue"):
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/login", json={"team": team}).json() == {"team": team}
            cookies[team] = http.cookies["session"]
    red = openai.OpenAI(
        base_url=url + "/v1",
        api_key="-",
        max_retries=0,
        timeout=10,
        default_headers={"cookie": "session=" + cookies["red"]},
    )
    blue = openai.OpenAI(
        base_url=url + "/v1",
        api_key="-",
        max_retries=0,
        timeout=10,
        default_headers={"cookie": "session=" + cookies["blue"]},
    )
    red.chat.completions.create(model="mock-echo", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        red.chat.completions.create(model="gpt-main", messages=HELLO)  # red may use the mock only
    assert [m.id for m in red.models.list()] == ["mock-echo"]
    list(blue.chat.completions.create(model="gpt-main", messages=HELLO, stream=True))
    door.run(door.gateway.flush())
    records = [r for r in tenant_hooks.records if isinstance(r, UsageRecord)]
    assert [(r.tenant, r.model, r.stream) for r in records] == [("red", "mock-echo", False), ("blue", "gpt-main", True)]
    assert upstream.calls == {"up-main": 1}
