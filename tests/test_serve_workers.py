"""`unimw serve --workers N`: N processes answering on one port, stopped together, refused where they would
count limits apart.

Which process answered a call is read from the kernel, not from the answer: the
server's end of the call's TCP connection (``/proc/net/tcp``, found by the
client's port) is a socket that exactly one process holds open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import policy_for
from tests.redis_support import require_redis, unique
from tests.servers import serve
from tests.test_serve import free_port, wait_until_up
from tests.upstreams.openai_app import OpenAIUpstream
from unimw.cli import main, worker_count
from unimw.loader import build_policy
from unimw.serve_workers import counted_in_process
from unimw.tenants import hash_key

#: Every wait on the servers is bounded by this.
WAIT = 30.0
#: Calls made, each on a new connection, before giving up on seeing two workers answer.
MAX_CALLS = 200
REPLY = "Hello from up-main! The capital of France is Paris."


class Served:
    """A running ``unimw serve`` process: its port and its worker processes."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def workers(self) -> set[int]:
        """The worker processes: the children multiprocessing spawned (not its resource tracker)."""
        return {pid for pid in children(self.process.pid) if "--multiprocessing-fork" in cmdline(pid)}


def start(config: Path, *flags: str, new_session: bool = False) -> Served:
    port = free_port()
    command = [sys.executable, "-m", "unimw.cli", "serve", "--config", str(config), "--port", str(port), *flags]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=new_session
    )
    served = Served(process, port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, timeout=WAIT)
    except BaseException:
        stop(served)
        raise
    return served


def stop(served: Served) -> None:
    process = served.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            for pid in served.workers():
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(timeout=WAIT)


@pytest.fixture
def served(tmp_path: Path, upstream_url: str) -> Iterator[Served]:
    """``unimw serve --workers 2`` on the loopback OpenAI upstream, no tenants."""
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url)))
    running = start(config, "--workers", "2")
    try:
        yield running
    finally:
        stop(running)


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead and not yet reaped, does not)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def socket_inode(server_port: int, client_port: int) -> int:
    """The inode of the server's end of the established loopback connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        ports = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if ports == (server_port, client_port) and state == "01":  # ESTABLISHED
            return inode
    raise AssertionError(f"no established connection from port {client_port} to {server_port}")


def holder(inode: int, pids: set[int]) -> int:
    """The one process of ``pids`` holding the socket ``inode`` open."""
    link = f"socket:[{inode}]"
    holders = set()
    for pid in pids:
        fds = Path("/proc") / str(pid) / "fd"
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) == link:
                    holders.add(pid)
            except OSError:
                continue
    assert len(holders) == 1, f"socket {inode} is held by {holders}"
    return holders.pop()


@contextmanager
def calling(base_url: str, api_key: str = "sk-client") -> Iterator[tuple[str | None, int]]:
    """One chat completion through the SDK on a new connection: its reply, and the connection's client port,
    while the SDK still holds the connection open (kept alive in its pool)."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=WAIT)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-main", messages=[{"role": "user", "content": "hi"}]
        )
        client_port: int = raw.http_response.extensions["network_stream"].get_extra_info("client_addr")[1]
        yield raw.parse().choices[0].message.content, client_port
    finally:
        client.close()


def call_until_two_answer(served: Served, api_key: str = "sk-client") -> list[str | None]:
    """Calls on new connections until each of the two worker processes has answered one; the replies.

    Every process that holds a served connection is asked (the parent too), so
    an answer from anything but a worker would show.
    """
    workers = served.workers()
    assert len(workers) == 2, f"workers: {workers}"
    everyone = workers | {served.process.pid}
    replies: list[str | None] = []
    answered_by: list[int] = []
    deadline = time.monotonic() + WAIT
    while len(set(answered_by)) < 2 and len(replies) < MAX_CALLS and time.monotonic() < deadline:
        with calling(served.base_url, api_key) as (reply, client_port):
            answered_by.append(holder(socket_inode(served.port, client_port), everyone))
        replies.append(reply)
    assert served.workers() == workers  # none died and was replaced meanwhile
    assert set(answered_by) == workers, f"{len(replies)} calls answered by {set(answered_by)}, workers {workers}"
    return replies


def test_two_workers_answer_calls_of_the_sdk(served: Served, upstream: OpenAIUpstream) -> None:
    replies = call_until_two_answer(served)
    assert replies == [REPLY] * len(replies)
    assert upstream.calls == {"up-main": len(replies)}


def test_sigterm_stops_the_parent_and_every_worker(served: Served) -> None:
    call_until_two_answer(served)
    workers = served.workers()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=WAIT) == 0
    assert [pid for pid in workers if alive(pid)] == []
    assert children(served.process.pid) == set()
    with pytest.raises(openai.APIConnectionError), calling(served.base_url):
        pass


def test_ctrl_c_stops_the_parent_and_every_worker(tmp_path: Path, upstream_url: str) -> None:
    """Ctrl-C in a terminal: SIGINT to the whole process group, the workers too."""
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url)))
    served = start(config, "--workers", "2", new_session=True)
    try:
        call_until_two_answer(served)
        workers = served.workers()
        os.killpg(served.process.pid, signal.SIGINT)
        assert served.process.wait(timeout=WAIT) == 0
        deadline = time.monotonic() + WAIT
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in workers if alive(pid)] == []
    finally:
        stop(served)


def test_one_worker_is_one_process(tmp_path: Path, upstream_url: str) -> None:
    """``--workers 1`` (the default) serves from the process started, with no children, as before."""
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url)))
    served = start(config, "--workers", "1")
    try:
        with calling(served.base_url) as (reply, client_port):
            assert holder(socket_inode(served.port, client_port), {served.process.pid}) == served.process.pid
        assert reply == REPLY
        assert children(served.process.pid) == set()
    finally:
        stop(served)


def test_each_worker_exports_its_spans_by_otlp(tmp_path: Path, upstream_url: str) -> None:
    """``--otel otlp`` with two workers: each has its own exporter, flushed when it stops, so every call's span
    reaches the collector, whichever worker answered it."""
    received: list[bytes] = []

    async def collect(request: Request) -> Response:
        if request.path_params["signal"] == "traces":
            received.append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url)))
    collector = Starlette(routes=[Route("/v1/{signal}", collect, methods=["POST"])])
    with serve(collector) as url, pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        served = start(config, "--workers", "2", "--otel", "otlp")
        try:
            replies = call_until_two_answer(served)
        finally:
            stop(served)
    assert served.process.returncode == 0
    spans = [
        span.name
        for body in received
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert spans.count("chat gpt-main") == len(replies)


def test_a_worker_that_cannot_build_its_app_stops_the_server(tmp_path: Path) -> None:
    """Each worker builds its app; one that fails to is not restarted for ever: the server exits with 1.

    The policy's resolver imports in the parent, which checks the policy, and
    refuses to in a worker, as a module whose import depends on the process would.
    """
    (tmp_path / "parent_only.py").write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise ImportError('not in a worker')\n"
        "def resolve(scope):\n"
        "    return None\n"
    )
    config = tmp_path / "policies.yaml"
    config.write_text(
        "providers: {mock: {kind: mock}}\n"
        "models: {mock-echo: {provider: mock, model: mock-echo}}\n"
        "tenancy:\n"
        "  resolve: [{callable: 'parent_only:resolve'}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "serve", "--config", str(config), "--port", str(free_port()), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
    )  # fmt: skip
    assert result.returncode == 1
    expected = f"error: {config}:4: tenancy.resolve.0.callable: cannot use 'parent_only:resolve': not in a worker"
    # One such error from each worker that got as far as building its app before the parent stopped them; two
    # workers may write theirs at the same moment, so they are counted in the text, not by line.
    assert result.stderr.count(expected) >= 1
    assert result.stderr.count("error:") == result.stderr.count(expected)


def limited_policy(upstream_url: str, store: str, tenant: str = "acme") -> dict[str, Any]:
    return policy_for(
        upstream_url,
        plans={"pro": {"limits": [{"per": "minute", "requests": 10_000}]}},
        tenants={tenant: {"plan": "pro", "api_keys": [hash_key("sk-acme")]}},
        tenancy={"store": store},
    )


def test_limits_on_a_memory_store_refuse_two_workers(tmp_path: Path, upstream_url: str) -> None:
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(limited_policy(upstream_url, "memory://")))
    result = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {config}: plans.pro.limits are counted in each process with tenancy.store memory://, "
        "so 2 workers would let through up to 2 times each limit: set tenancy.store to redis://host:port/db "
        "(one set of counters for every worker), or serve with --workers 1\n"
    )


def test_limits_on_redis_are_counted_once_for_every_worker(tmp_path: Path, upstream_url: str) -> None:
    """With tenancy.store on Redis, two workers start, and the calls each answered are in one counter."""
    store = require_redis()
    tenant = unique("acme")
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(limited_policy(upstream_url, store, tenant)))
    served = start(config, "--workers", "2")
    try:
        replies = call_until_two_answer(served, api_key="sk-acme")
    finally:
        stop(served)
    assert replies == [REPLY] * len(replies)
    report = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "usage", "--config", str(config), "--tenant", tenant, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout) == {
        "tenants": [
            {
                "tenant": tenant,
                "plan": "pro",
                "limits": [
                    {
                        "quantity": "requests",
                        "per": "minute",
                        "used": len(replies),
                        "limit": 10_000,
                        "remaining": 10_000 - len(replies),
                    }
                ],
            }
        ]
    }


ROOTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "no tenancy": ({}, None),
    "global limits": ({"limits": [{"model": "m", "per": "minute", "requests": 5}]}, "limits"),
    "a plan's limits": ({"plans": {"free": {"limits": [{"per": "day", "usd": 1}]}}}, "plans.free.limits"),
    "a tenant's limits": (
        {"plans": {"free": {}}, "tenants": {"acme": {"plan": "free", "limits": [{"per": "day", "tokens": 9}]}}},
        "tenants.acme.limits",
    ),
    "tenants without limits": ({"plans": {"free": {}}, "tenants": {"acme": {"plan": "free"}}}, None),
    "limits from the app's identities": (
        {"plans": {"free": {}}, "tenancy": {"resolve": ["api_key", {"callable": "json:loads"}]}},
        "tenancy.resolve[1]",
    ),
    "identities with no tenancy to meter": ({"tenancy": {"resolve": [{"key_lookup": "json:loads"}]}}, None),
    "a plan's limits on Redis": (
        {"plans": {"free": {"limits": [{"per": "day", "usd": 1}]}}, "tenancy": {"store": "redis://127.0.0.1:1/0"}},
        None,
    ),
}


@pytest.mark.parametrize("name", ROOTS)
def test_what_is_counted_in_each_process(name: str) -> None:
    """The first part of a policy whose counters a memory:// store would keep apart in each worker."""
    extra, counted = ROOTS[name]
    data = {"providers": {"p": {"kind": "mock"}}, "models": {"m": {"provider": "p", "model": "mock-echo"}}, **extra}
    assert counted_in_process(build_policy(data)) == counted


def test_workers_is_a_positive_count_or_auto(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", "0"])
    assert exited.value.code == 2
    assert "argument --workers: must be a positive whole number or auto, not 0" in capsys.readouterr().err
