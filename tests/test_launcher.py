"""Launcher lifecycle against a real local HTTP process: start, health, crash, timeout, teardown."""

import os
import sys
import time
from pathlib import Path

import pytest

from speedrun.launch.command import LaunchSpec
from speedrun.launch.server import LOW_PORTS, ServerError, ephemeral_range, free_port, port_in_use, running, start

SERVER = Path(__file__).parent / "servers" / "lifecycle_server.py"


def spec(port: int, mode: str, tmp_path: Path, delay: float = 0.5) -> LaunchSpec:
    argv = [
        sys.executable,
        str(SERVER),
        "--port",
        str(port),
        "--mode",
        mode,
        "--delay",
        str(delay),
        "--child-pid-file",
        str(tmp_path / "child.pid"),
    ]
    return LaunchSpec(argv=argv, env={"SPEEDRUN_TEST": "1"}, side="overlay")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_healthy_then_teardown_kills_whole_group(tmp_path):
    port = free_port()
    with running(spec(port, "ok", tmp_path), tmp_path / "log", port=port, timeout_s=30, show_progress=False) as srv:
        assert srv.healthy()
        assert port_in_use("127.0.0.1", port)
        child = int((tmp_path / "child.pid").read_text())
        assert pid_alive(child)
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child), "the server's child process survived teardown"
    assert not port_in_use("127.0.0.1", port)
    assert "fired up" in (tmp_path / "log").read_text()


def test_crash_before_healthy_reports_log_tail(tmp_path):
    port = free_port()
    with pytest.raises(ServerError) as exc:
        with running(spec(port, "crash", tmp_path), tmp_path / "log", port=port, timeout_s=30, show_progress=False):
            pass
    assert "exited with code 3" in str(exc.value)
    assert "CUDA out of memory (simulated)" in str(exc.value)


def test_timeout_kills_server(tmp_path):
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="not healthy after 3 s"):
        with running(
            spec(port, "never-healthy", tmp_path), tmp_path / "log", port=port, timeout_s=3, show_progress=False
        ):
            pass
    assert time.monotonic() - t0 < 30
    child = int((tmp_path / "child.pid").read_text())
    time.sleep(0.5)
    assert not pid_alive(child)
    assert not port_in_use("127.0.0.1", port)


def test_port_in_use_is_one_clear_error(tmp_path):
    port = free_port()
    first = start(spec(port, "ok", tmp_path), tmp_path / "log1", "127.0.0.1", port)
    try:
        deadline = time.monotonic() + 20
        while not first.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(ServerError, match=f"port {port} .* already in use"):
            start(spec(port, "ok", tmp_path), tmp_path / "log2", "127.0.0.1", port)
    finally:
        first.stop()


def test_missing_executable_is_an_error(tmp_path):
    bad = LaunchSpec(argv=["/nonexistent/python", "-m", "x"], env={}, side="baseline")
    with pytest.raises(ServerError, match="cannot start"):
        start(bad, tmp_path / "log", "127.0.0.1", free_port())


def test_a_loose_plugin_variable_in_the_shell_stops_the_launch(tmp_path, monkeypatch):
    """The launcher passes SPEEDRUN_SETTINGS; a loose SPEEDRUN_* variable left in the caller's environment would
    make the plugin refuse in every server process (which SGLang only logs): the launch stops first, naming it."""
    from speedrun.overlays.environ import PluginSettings

    port = free_port()
    ok = spec(port, "ok", tmp_path)
    launch = LaunchSpec(ok.argv, ok.env | PluginSettings(ops=("mla_decode",)).env(), "overlay")
    monkeypatch.setenv("SPEEDRUN_MXFP4_MOE_LAYOUT", "plain")
    with pytest.raises(ServerError, match="^the overlay server's environment: SPEEDRUN_MXFP4_MOE_LAYOUT is set as"):
        start(launch, tmp_path / "log", "127.0.0.1", port)
    assert not (tmp_path / "log").exists() and not port_in_use("127.0.0.1", port)  # nothing was started
    monkeypatch.delenv("SPEEDRUN_MXFP4_MOE_LAYOUT")
    server = start(launch, tmp_path / "log", "127.0.0.1", port)
    server.stop()


def test_sigterm_to_the_cli_tears_the_server_down(tmp_path):
    """`timeout`/`kill` on a speedrun process holding a server: the CLI's SIGTERM handler unwinds like Ctrl-C,
    so the server's whole process group goes too (no orphan left on a GPU host)."""
    import signal
    import subprocess

    port = free_port()
    code = (
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_launcher import spec\n"
        "from speedrun.cli import _interrupt\n"
        "from speedrun.launch.server import running\n"
        "signal.signal(signal.SIGTERM, _interrupt)\n"
        "tmp, port = Path(sys.argv[2]), int(sys.argv[3])\n"
        "with running(spec(port, 'ok', tmp), tmp / 'log', port=port, timeout_s=30, show_progress=False):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(60)\n"
    )
    argv = [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path), str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    child = int((tmp_path / "child.pid").read_text())
    assert pid_alive(child)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child), "SIGTERM to the CLI left the server running"
    assert not port_in_use("127.0.0.1", port)


def test_server_ignoring_sigterm_is_killed_after_the_grace(tmp_path, capfd):
    """A server stuck in its shutdown (here: SIGTERM ignored, and a worker in its group that inherits that):
    `stop` says what it waits for, escalates to SIGKILL after the grace and returns only once the group is gone."""
    port, child_file = free_port(), tmp_path / "child.pid"
    argv = [sys.executable, "-m", "speedrun.eval.fakeserver", "--port", str(port), "--ignore-sigterm"]
    srv = start(
        LaunchSpec([*argv, "--child-pid-file", str(child_file)], {}, "baseline"), tmp_path / "log", "127.0.0.1", port
    )
    deadline = time.monotonic() + 30
    while not (srv.healthy() and child_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(child_file.read_text())
    t0 = time.monotonic()
    srv.stop(grace_s=1.5)
    assert 1.5 <= time.monotonic() - t0 < 10
    assert not pid_alive(srv.proc.pid) and not pid_alive(child) and not port_in_use("127.0.0.1", port)
    err = capfd.readouterr().err
    pgid = srv.proc.pid
    assert f"stopping baseline server (pid {pgid}, pgid {pgid}, port {port}): SIGTERM, waiting up to 1.5 s" in err
    assert f"baseline server still running after 1.5 s: escalating to SIGKILL (pgid {pgid})" in err
    assert f"stopped baseline server (pid {pgid}, pgid {pgid}, port {port})" in err


def test_free_port_is_outside_the_ephemeral_range():
    """Ports the launcher picks for servers and routers come from below the kernel's ephemeral range, where no
    outgoing connection (the health checks, the benchmark client) can take one before the server binds it; each is
    bindable when returned."""
    import socket

    lo, hi = ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert not lo <= port <= hi and LOW_PORTS[0] <= port <= LOW_PORTS[1], (port, lo, hi)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
