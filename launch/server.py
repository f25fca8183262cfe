"""Run one SGLang server: own process group, health wait with a progress display, log kept on disk,
whole-group teardown on exit, Ctrl-C, timeout or crash (then the log tail is shown)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.launch.command import LaunchSpec, merged_env


class ServerError(RuntimeError):
    """The server could not be started or died; the message carries the log tail."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    spec: LaunchSpec
    proc: subprocess.Popen
    log_path: Path
    host: str
    port: int
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after `grace_s`; no orphans stay behind."""
        pgid = self.proc.pid  # start_new_session=True made the server its own group leader
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.2)  # poll() reaps our child; a zombie leader would keep the group "alive"
            if not _group_alive(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def start(spec: LaunchSpec, log_path: Path, host: str, port: int) -> Server:
    if port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use; pick another with --port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0)
    log.write(f"# {spec.side}: {spec.shell()}\n".encode())
    try:
        proc = subprocess.Popen(
            spec.argv,
            env=merged_env(spec),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ServerError(f"cannot start {spec.argv[0]}: {exc}") from None
    finally:
        log.close()
    return Server(spec, proc, log_path, host, port)


def wait_healthy(server: Server, timeout_s: float, show_progress: bool = True) -> float:
    """Block until GET /health answers 200; returns seconds waited. Raises ServerError on exit or timeout."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    t0 = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task(f"starting {server.spec.side} server on :{server.port}")
        while True:
            if not server.alive():
                raise ServerError(
                    f"server exited with code {server.proc.returncode} before it was healthy; "
                    f"log {server.log_path}:\n{server.log_tail()}"
                )
            if server.healthy():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise ServerError(
                    f"server not healthy after {timeout_s:.0f} s; log {server.log_path}:\n{server.log_tail()}"
                )
            last = server.log_tail(1).strip()[-90:]
            progress.update(task, description=f"starting {server.spec.side} server on :{server.port}  {last}")
            time.sleep(1.0)


@contextlib.contextmanager
def running(
    spec: LaunchSpec,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    timeout_s: float = 1200,
    show_progress: bool = True,
) -> Iterator[Server]:
    """Start, wait for health, yield, and always tear the whole group down (also on Ctrl-C)."""
    server = start(spec, log_path, host, port)
    try:
        wait_healthy(server, timeout_s, show_progress)
        yield server
    finally:
        server.stop()
