"""The server the launcher starts inherits the caller's environment (scripts/device/setup.sh exports SGLang
variables, e.g. SGLANG_JIT_DEEPGEMM_FAST_WARMUP, for the servers a device call starts), with the recipe's on top."""

import sys
from pathlib import Path

from speedrun.launch.command import LaunchSpec
from speedrun.launch.server import free_port, running

SERVER = Path(__file__).parent / "servers" / "lifecycle_server.py"


def test_the_server_gets_the_callers_environment_and_the_recipes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SGLANG_JIT_DEEPGEMM_FAST_WARMUP", "1")
    monkeypatch.setenv("SPEEDRUN_TEST", "from the shell")  # the spec's own value wins
    port = free_port()
    argv = [sys.executable, str(SERVER), "--port", str(port), "--child-pid-file", str(tmp_path / "child.pid")]
    spec = LaunchSpec(argv=argv, env={"SPEEDRUN_TEST": "1"}, side="baseline")
    with running(spec, tmp_path / "log", port=port, timeout_s=30, show_progress=False) as srv:
        raw = Path(f"/proc/{srv.proc.pid}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    assert env["SGLANG_JIT_DEEPGEMM_FAST_WARMUP"] == "1"
    assert env["SPEEDRUN_TEST"] == "1"
