"""Processes the bench starts: pinned to a core, waited for with a timeout, always stopped."""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cores:
    """Where each side runs; ``None`` when the machine has a single usable core (no pinning)."""

    client: int | None
    server: int | None

    @classmethod
    def detect(cls, pin: bool) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None)
        return cls(cpus[0], cpus[1])

    def pin_self(self) -> None:
        if self.client is not None:
            os.sched_setaffinity(0, {self.client})

    def prefix(self, core: int | None) -> list[str]:
        """``taskset`` in front of a command, so its process starts on ``core``."""
        if core is None or shutil.which("taskset") is None:
            return []
        return ["taskset", "-c", str(core)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MB, from ``/proc/<pid>/statm``."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class Processes:
    """Starts child processes and stops every one of them on exit, killing those that linger."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout piped (to read a ready line) and stderr to ``<name>.log``."""
        log = (self._log_dir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(
                list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
            )
        finally:
            log.close()
        self._children.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self._log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        while self._children:
            _, proc = self._children.pop()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.stop(proc)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line ``proc`` prints, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.args!r} within {timeout:g}s")
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"{proc.args!r} exited (status {proc.wait(1)}) before it was ready")
    return line


def wait_http(proc: subprocess.Popen[bytes], port: int, path: str = "/health", timeout: float = 20.0) -> None:
    """Poll ``GET path`` until it answers 200; fail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode} before it was ready")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise TimeoutError(f"{proc.args!r} was not ready on port {port} within {timeout:g}s")


def python(*args: str) -> list[str]:
    """A command line running this interpreter, unbuffered."""
    return [sys.executable, "-u", *args]
