"""Long-running processes of the topology test: each in a session of its own (so the whole
group, a code server's run workers included, can be stopped), output to a log file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Service", "free_port", "port_open", "stop_all", "wait_for"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, name: str, args: Sequence[str], *, env: dict[str, str], cwd: Path, log_dir: Path
    ) -> Service:
        log = log_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return cls(name, proc, log)

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, first: int = signal.SIGTERM, wait: float = 30.0) -> None:
        """``first`` to the process, up to ``wait`` s for its whole group to exit, then
        SIGKILL to what is left of the group."""
        if self.running():
            self.proc.send_signal(first)
        deadline = time.monotonic() + wait
        while (self.running() or _group_alive(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def group_gone(self) -> bool:
        return not _group_alive(self.proc.pid)


def wait_for(
    what: str, condition: Callable[[], Any], timeout: float, services: Sequence[Service] = ()
) -> Any:
    """Poll ``condition`` until it returns something truthy and return that (bounded; fails
    at once, with its log, if one of ``services`` exited)."""
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            if not service.running():
                raise AssertionError(
                    f"{service.name} exited ({service.proc.returncode}) while waiting for "
                    f"{what}:\n{service.tail()}"
                )
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name} ({s.log}):\n{s.tail(1500)}" for s in services)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.5)


def stop_all(services: Sequence[Service], wait: float = 30.0) -> dict[str, float]:
    """SIGTERM to every service at once, up to ``wait`` s for all their process groups to
    exit, then SIGKILL to what is left; return the seconds each took to exit."""
    began = time.monotonic()
    for service in services:
        if service.running():
            service.proc.send_signal(signal.SIGTERM)
    took: dict[str, float] = {}
    while len(took) < len(services) and time.monotonic() - began < wait:
        for service in services:
            exited = service.proc.poll() is not None and not _group_alive(service.proc.pid)
            if exited and service.name not in took:
                took[service.name] = time.monotonic() - began
        time.sleep(0.2)
    for service in services:
        service.stop(wait=0)  # SIGKILL to the group of any left
    return took
