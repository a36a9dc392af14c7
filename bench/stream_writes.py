"""Where a streamed answer's first byte goes through ``unimw serve``, and how many writes carry the answer.

    python -m bench.stream_writes                      # timings, then writes counted with strace
    python -m bench.stream_writes --checkout /tmp/old  # the same against another checkout's unimw

The fake upstream and ``unimw serve`` run on one core, this client on the
other (as in ``bench.run``). A blocking raw socket sends each request and
time-stamps every ``recv``, so the figures are the network's view: when the
head is complete, when the first body byte arrives, when the answer ends,
and how many reads the answer took. Direct and through-the-server calls
alternate within each round, so drift hits them alike. With strace on the
path, the server is then traced for a few more streamed answers and the
writes on the client's connection are counted per answer.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from bench.clients import API_KEY, CHAT, STREAM, policy
from bench.procs import ROOT, Cores, Processes, free_port, python, read_line, wait_http

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Answer:
    """One request's timeline in µs from the send: head complete, first body byte, end; reads it took."""

    head: float
    first: float
    end: float
    reads: int


class Raw:
    """One kept-alive connection; ``call`` sends a request and reads its whole answer, timing each read."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, body: bytes) -> bytes:
        head = (
            f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {API_KEY}\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def call(self, request: bytes) -> Answer:
        start = time.perf_counter_ns()
        self.sock.sendall(request)
        data = b""
        reads = 0
        head_at = first_at = -1
        end_of_head = -1
        while True:
            chunk = self.sock.recv(1 << 20)
            now = time.perf_counter_ns()
            if not chunk:
                raise RuntimeError("the server closed the connection mid-answer")
            reads += 1
            data += chunk
            if end_of_head < 0 and (found := data.find(b"\r\n\r\n")) >= 0:
                end_of_head, head_at = found + 4, now
            if end_of_head >= 0 and first_at < 0 and len(data) > end_of_head:
                first_at = now
            if end_of_head >= 0 and _complete(data, end_of_head):
                break
        head, first, end = ((t - start) / 1000 for t in (head_at, first_at, now))
        return Answer(head, first, end, reads)

    def close(self) -> None:
        self.sock.close()


def _complete(data: bytes, end_of_head: int) -> bool:
    head = data[:end_of_head].lower()
    if b"transfer-encoding: chunked" in head:
        return data.endswith(b"\r\n0\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head)[1])  # type: ignore[index]
    return len(data) - end_of_head >= length


def p50(values: list[float]) -> float:
    return statistics.median(values)


def measure(contenders: dict[str, Callable[[], Answer]], rounds: int, count: int) -> dict[str, list[Answer]]:
    for call in contenders.values():
        for _ in range(50):
            call()
    seen: dict[str, list[Answer]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            seen[name].extend(contenders[name]() for _ in range(count))
    return seen


def count_writes(pid: int, port: int, answers: int, log: Path) -> float:
    """Writes on the client connection per streamed answer, from strace attached to every thread of ``pid``."""
    argv = [
        "strace",
        "-f",
        "-qq",
        "-s",
        "24",
        "-e",
        "trace=write,writev,sendto,sendmsg",
        "-o",
        str(log),
        "-p",
        str(pid),
    ]
    tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # strace attaches asynchronously: let it settle before the traced calls
        client = Raw(port)
        request = client.request(orjson.dumps(STREAM))
        for _ in range(answers):
            client.call(request)
        client.close()
        time.sleep(0.3)
    finally:
        tracer.terminate()
        tracer.wait(10)
    lines = log.read_text().splitlines()
    fds = {m[1] for line in lines if (m := re.search(r"(?:write|writev|sendto|sendmsg)\((\d+), .*HTTP/1.1 200", line))}
    if len(fds) != 1:
        raise RuntimeError(f"expected one client connection in the trace, found fds {sorted(fds)}")
    (fd,) = fds
    writes = [line for line in lines if re.search(rf"(?:write|writev|sendto|sendmsg)\({fd}, ", line)]
    return len(writes) / answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_writes", description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose unimw serve runs")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=300, help="calls per contender per round")
    parser.add_argument("--traced", type=int, default=20, help="streamed answers traced with strace (0: none)")
    args = parser.parse_args(argv)
    cores = Cores.detect(pin=True)
    cores.pin_self()
    with tempfile.TemporaryDirectory() as tmp, Processes(Path(tmp)) as procs:
        upstream = procs.start(
            "upstream", [*cores.prefix(cores.server), *python("-m", "bench.upstream", "--port", "0")]
        )
        up_port = int(read_line(upstream, timeout=20))
        wait_http(upstream, up_port)
        config = Path(tmp) / "serve.yaml"
        config.write_text(yaml.safe_dump(policy(f"http://127.0.0.1:{up_port}/v1")))
        port = free_port()
        # -P: the checkout's unimw, not the one in the working directory that ``-m`` would put first.
        env = {**os.environ, "PYTHONPATH": str(args.checkout)}
        where = subprocess.run(
            [sys.executable, "-P", "-c", "import unimw; print(unimw.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        serve_argv = [sys.executable, "-u", "-P", "-m", "unimw.cli", "serve", "--config", str(config)]
        serve_argv += ["--port", str(port)]
        server = procs.start("serve", [*cores.prefix(cores.server), *serve_argv, "--log-level", "warning"], env)
        wait_http(server, port, timeout=30)
        direct, through = Raw(up_port), Raw(port)
        chat, stream = orjson.dumps(CHAT), orjson.dumps(STREAM)
        contenders = {
            "direct plain": lambda: direct.call(direct.request(chat)),
            "serve plain": lambda: through.call(through.request(chat)),
            "direct stream": lambda: direct.call(direct.request(stream)),
            "serve stream": lambda: through.call(through.request(stream)),
        }
        seen = measure(contenders, args.rounds, args.count)
        direct.close()
        through.close()
        print(f"unimw serve runs {where}; {args.rounds} rounds x {args.count} calls each; µs from the send (p50)")
        print(f"{'':14} {'head':>8} {'1st body':>9} {'end':>8} {'reads/answer':>13}")
        for name, answers in seen.items():
            print(
                f"{name:14} {p50([a.head for a in answers]):8.1f} {p50([a.first for a in answers]):9.1f}"
                f" {p50([a.end for a in answers]):8.1f} {statistics.mean(a.reads for a in answers):13.2f}"
            )
        plain_added = p50([a.end for a in seen["serve plain"]]) - p50([a.end for a in seen["direct plain"]])
        ttfb_added = p50([a.first for a in seen["serve stream"]]) - p50([a.first for a in seen["direct stream"]])
        head_added = p50([a.head for a in seen["serve stream"]]) - p50([a.head for a in seen["direct stream"]])
        print(f"added by unimw serve: plain answer {plain_added:+.1f} µs; stream head {head_added:+.1f} µs,")
        print(f"  stream first body byte {ttfb_added:+.1f} µs")
        if args.traced and shutil.which("strace"):
            per = count_writes(server.pid, port, args.traced, Path(tmp) / "strace.log")
            print(
                f"writes on the client connection per 50-chunk streamed answer (strace, {args.traced} answers): {per:g}"
            )
        elif args.traced:
            print("strace is not installed: writes not counted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
