"""Run one SGLang server: own process group, health wait with a progress display, log kept on disk,
whole-group teardown on exit, Ctrl-C, timeout or crash (then the log tail is shown)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.launch.command import LaunchSpec, merged_env
from speedrun.launch.procgroup import group_alive, signal_group, signal_name
from speedrun.overlays.environ import SETTINGS, PluginSettings


class ServerError(RuntimeError):
    """The server could not be started or died; the message carries the log tail."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


LOW_PORTS = (20000, 32767)  # below Linux's default ephemeral range (32768-60999) and the BSDs' (49152-65535)


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux: /proc; elsewhere the IANA range)."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 49152, 65535


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, chosen outside the ephemeral range where it can be: a port the kernel picked
    (bind to 0) is also what it gives the next outgoing connection, which may take it before the server binds it
    (the tests' fake deployments lost ports that way)."""
    eph, pick = ephemeral_range(), random.SystemRandom()  # not the global generator: tests may seed it
    for _ in range(64):
        port = pick.randint(*LOW_PORTS)
        if eph[0] <= port <= eph[1]:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, contextlib.suppress(OSError):
            s.bind((host, port))
            return port
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
    stopped: bool = False

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

    def describe(self) -> str:
        return f"{self.spec.side} server (pid {self.proc.pid}, pgid {self.proc.pid}, port {self.port})"

    def stop(self, grace_s: float = 20.0, *, interrupted: bool = False) -> None:
        """SIGTERM the whole process group, SIGKILL it after `grace_s` or at once on an interrupt (a second
        Ctrl-C/SIGTERM) that arrives while waiting, and wait until the group is gone: no orphan keeps the port or
        the GPU. Says what it does on stderr; after an interrupt also the log tail. An interrupt caught here is
        raised again once the group is gone. Idempotent."""
        if self.stopped:
            return
        pgid, t0 = self.proc.pid, time.monotonic()  # start_new_session=True made the server its own group leader
        late: KeyboardInterrupt | None = None
        try:
            say(f"stopping {self.describe()}: SIGTERM, waiting up to {grace_s:g} s…")
            signal_group(pgid, signal.SIGTERM)
            gone = self._wait_gone(pgid, grace_s)
        except KeyboardInterrupt as exc:
            late, gone = exc, False
            say(f"{signal_name(exc)} again: escalating to SIGKILL (pgid {pgid})")
        if not gone:
            if late is None:
                say(f"{self.spec.side} server still running after {grace_s:g} s: escalating to SIGKILL (pgid {pgid})")
            signal_group(pgid, signal.SIGKILL)
            gone = self._wait_killed(pgid)
        self.stopped = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)  # reap the leader, should it have died after the last poll
        if gone:
            say(f"stopped {self.describe()} in {time.monotonic() - t0:.1f} s")
        else:
            say(f"WARNING: process group {pgid} still has live processes after SIGKILL (stuck in the kernel?); "
                f"port {self.port} may stay taken: check `ps -g {pgid}`")  # fmt: skip
        if interrupted or late is not None:
            say(f"server log {self.log_path}, last lines:\n{self.log_tail(15)}")
        if late is not None:
            raise late

    def _wait_gone(self, pgid: int, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            self.proc.poll()  # reaps our child, the leader; its zombie would count as a live group member
            if not group_alive(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _wait_killed(self, pgid: int, wait_s: float = 30.0) -> bool:
        """After SIGKILL nothing harder can be sent, so further interrupts only keep us waiting for the group."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._wait_gone(pgid, max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                say(f"still waiting for process group {pgid} to go (SIGKILL sent)")


def say(message: str) -> None:
    """Teardown news on stderr, plain and unbuffered: it must get out while signals arrive."""
    print(message, file=sys.stderr, flush=True)


def start(spec: LaunchSpec, log_path: Path, host: str, port: int) -> Server:
    env = merged_env(spec)
    if SETTINGS in spec.env:  # the plugin would refuse them (and SGLang only logs that): say so before starting
        try:
            PluginSettings.from_env(env)
        except ValueError as exc:
            raise ServerError(f"the {spec.side} server's environment: {exc}") from None
    if port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use; pick another with --port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0)
    log.write(f"# {spec.side}: {spec.shell()}\n".encode())
    try:
        proc = subprocess.Popen(
            spec.argv,
            env=env,
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
    """Start, wait for health, yield, and always tear the whole group down. On Ctrl-C/SIGTERM: say what was
    stopped and show the log tail; a second one while stopping escalates to SIGKILL (and still waits)."""
    server = start(spec, log_path, host, port)
    try:
        wait_healthy(server, timeout_s, show_progress)
        yield server
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt):  # the first signal decides the exit code
            server.stop(interrupted=True)
        raise
    finally:
        server.stop()


def one_request(url: str) -> str:
    """One short greedy /generate (the `--check` of `speedrun launch`): the text it returns."""
    body = json.dumps(
        {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    ).encode()
    req = urllib.request.Request(f"{url}/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())["text"]
