"""Process faults against real processes and real signals: `speedrun launch|bench|run` as subprocesses, each
serving the fake server (eval/fakeserver.py) as if it were `python -m sglang.launch_server`; Ctrl-C and SIGTERM,
once or twice, must leave no process and no port behind, exit 130/143 and say what was stopped. Also
`speedrun report` on a missing path and on unreadable report files."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from speedrun.launch.server import free_port, port_in_use

pytestmark = pytest.mark.timeout(180)

SHIM = '''"""`python -m sglang.launch_server ...` as speedrun builds it, served by the fake server on the same port;
FAKE_SGLANG_<SIDE> adds fake-server options per side."""
import argparse, os, shlex
from speedrun.eval import fakeserver
from speedrun.overlays.environ import PluginSettings
p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
args, _ = p.parse_known_args()
side = "overlay" if PluginSettings.from_env().ops else "baseline"
extra = shlex.split(os.environ.get("FAKE_SGLANG_" + side.upper(), ""))
print(f"fake sglang ({side}) on {args.host}:{args.port} pid {os.getpid()}", flush=True)
fakeserver.main(["--host", args.host, "--port", str(args.port), *extra])
'''


def recipe_file(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    scenario = {"isl": 64, "osl": 16, "concurrency": [2], "prompts_per_concurrency": 2, "warmup_per_concurrency": 1}
    recipe = {
        "name": "fake-faults",
        "description": "the fake server as SGLang",
        "model": {"path": str(model)},
        "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 1},
        "overlays": {"mla_decode": {"enabled": True}},
        "benchmarks": {"scenarios": [scenario], "timeout_s": 60},
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def group_alive(pgid: int) -> bool:
    """A live (non-zombie) process in the group, from /proc: a zombie holds no port and no GPU."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Speedrun:
    """`speedrun ARGS` as a real process (own process group, like a shell job); output collected by threads so
    the test can wait for a line while the process runs."""

    def __init__(self, args: list[str], tmp_path: Path, **side_opts: str):
        shim = tmp_path / "shim" / "sglang"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text("")
        (shim / "launch_server.py").write_text(SHIM)
        env = os.environ | {f"FAKE_SGLANG_{k.upper()}": v for k, v in side_opts.items()}
        env["PYTHONPATH"] = os.pathsep.join([str(shim.parent), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "speedrun.cli", *args]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.pgids: list[int] = []  # server groups to clean up if the test fails
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._drain, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _drain(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, pattern: str, timeout: float, where: str = "err") -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, "".join(self.err if where == "err" else self.out))
            if m:
                return m
            if self.proc.poll() is not None:
                time.sleep(0.3)  # the drain threads may still hold the last lines
                m = re.search(pattern, "".join(self.err if where == "err" else self.out))
                if m:
                    return m
                break
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in std{where} (exit {self.proc.poll()}):\n{''.join(self.out)}\n{self.stderr}")

    def kill_all(self) -> None:
        for pgid in [self.proc.pid, *self.pgids]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(10)


@pytest.fixture
def speedrun(tmp_path):
    started: list[Speedrun] = []

    def start(args: list[str], **side_opts: str) -> Speedrun:
        started.append(Speedrun(args, tmp_path, **side_opts))
        return started[-1]

    yield start
    for s in started:  # whatever a failed test left running
        s.kill_all()


def requests_served(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
            return json.loads(r.read())["requests"]
    except OSError:
        return 0


def assert_gone(pgid: int, port: int) -> None:
    assert not group_alive(pgid), f"process group {pgid} survived: " + os.popen(f"ps -o pid,stat,cmd -g {pgid}").read()
    assert not port_in_use("127.0.0.1", port), f"port {port} still taken"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_second_signal_during_teardown_kills_the_group(tmp_path, speedrun, sig, code):
    """`speedrun launch`, a server that ignores SIGTERM (and a worker in its group): the first signal starts the
    graceful teardown, a second one escalates to SIGKILL at once and still waits until the group is gone."""
    port, child_file = free_port(), tmp_path / "child.pid"
    cli = speedrun(
        ["launch", str(recipe_file(tmp_path)), "--port", str(port), "--out", str(tmp_path / "runs")],
        overlay=f"--ignore-sigterm --child-pid-file {shlex.quote(str(child_file))}",
    )
    cli.wait_for("serving; Ctrl-C", 90, where="out")
    pgid = os.getpgid(int(child_file.read_text()))
    cli.pgids.append(pgid)
    cli.proc.send_signal(sig)
    cli.wait_for(rf"stopping overlay server \(pid {pgid}, pgid {pgid}, port {port}\): SIGTERM, waiting up to 20 s", 30)
    time.sleep(0.5)
    assert cli.proc.poll() is None and group_alive(pgid)  # the server ignores SIGTERM: teardown is waiting
    t0 = time.monotonic()
    cli.proc.send_signal(sig)
    assert cli.proc.wait(30) == code, cli.stderr
    assert time.monotonic() - t0 < 15, "the second signal did not cut the 20 s grace short"
    assert_gone(pgid, port)
    err = cli.stderr
    assert f"{sig.name} again: escalating to SIGKILL (pgid {pgid})" in err
    assert f"stopped overlay server (pid {pgid}, pgid {pgid}, port {port})" in err
    assert f"fake sglang (overlay) on 127.0.0.1:{port} pid {pgid}" in err  # the server log's tail
    assert "Traceback" not in err


def test_ctrl_c_during_bench_exits_130_and_marks_the_results(tmp_path, speedrun):
    """One Ctrl-C while `speedrun bench` measures a launched server: the server stops gracefully, the results file
    says the side was interrupted, the exit code is 130 (not 0, not 1)."""
    child_file, out = tmp_path / "child.pid", tmp_path / "bench"
    args = ["bench", str(recipe_file(tmp_path)), "--out", str(out), "--no-progress", "--osl", "200"]
    cli = speedrun(args, overlay=f"--tpot-ms 50 --child-pid-file {shlex.quote(str(child_file))}")
    log = out / "overlay" / "server.log"
    deadline = time.monotonic() + 90
    while not (log.exists() and "fake sglang" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    port = int(re.search(r"on 127.0.0.1:(\d+)", log.read_text()).group(1))
    while requests_served(port) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)  # the bench is under way
    pgid = os.getpgid(int(child_file.read_text()))
    cli.pgids.append(pgid)
    time.sleep(1.0)
    cli.proc.send_signal(signal.SIGINT)
    assert cli.proc.wait(60) == 130, cli.stderr
    assert_gone(pgid, port)
    assert f"stopped overlay server (pid {pgid}, pgid {pgid}, port {port})" in cli.stderr
    errors = json.loads((out / "overlay.json").read_text())["errors"]
    assert [e["what"] for e in errors] == ["interrupted"]
    assert errors[0]["message"].startswith("stopped by SIGINT during throughput"), errors[0]


def test_report_is_written_before_a_teardown_that_is_interrupted(tmp_path, speedrun):
    """`speedrun run`: both sides measured, SIGTERM while the overlay server is being torn down (it ignores SIGTERM,
    so teardown waits): both results files are complete, so the report must exist; exit 143, nothing left behind."""
    out = tmp_path / "run"
    args = ["run", str(recipe_file(tmp_path)), "--out", str(out), "--no-progress", "--skip-accuracy"]
    cli = speedrun(args, overlay="--ignore-sigterm")
    m = cli.wait_for(r"stopping overlay server \(pid (\d+), pgid \d+, port (\d+)\): SIGTERM", 150)
    pgid, port = int(m.group(1)), int(m.group(2))
    cli.pgids.append(pgid)
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.proc.wait(30) == 143, cli.stderr
    assert_gone(pgid, port)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speedup"] and "isl64-osl16-c2" in (out / "report.md").read_text()
    over = json.loads((out / "overlay.json").read_text())
    assert over["errors"] == [] and over["scenarios"][0]["status"] == "ok"  # measured in full: no "interrupted"


# ---------------------------------------------------------------- speedrun report
def report(*args: str):
    from speedrun.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, ["report", *args])


def good_report(pid: int = 7) -> dict:
    return {"role": "scheduler", "tp_rank": 0, "pid": pid, "ops_requested": ["mla_decode"], "applied": ["x"],
            "calls": {"mla_decode:triton": 3}, "fallbacks": {}, "errors": []}  # fmt: skip


def test_report_on_a_missing_path_is_one_line_error(tmp_path):
    res = report(str(tmp_path / "nope"))
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "nope: no such file or folder" in lines[0], res.output


def test_report_names_unreadable_files_and_fails(tmp_path):
    (tmp_path / "overlay-scheduler-tp0-4242.json").write_text(json.dumps(good_report(4242)))
    (tmp_path / "overlay-scheduler-tp1-8.json").write_text(json.dumps(good_report(8))[:40])  # torn
    (tmp_path / "overlay-launcher-9.json").write_text("[1, 2]")
    res = report(str(tmp_path))
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()
    torn = [ln for ln in lines if "overlay-scheduler-tp1-8.json: unreadable report: not valid JSON" in ln]
    listed = [ln for ln in lines if "launcher-9.json: unreadable report: expected a JSON object, got list" in ln]
    assert len(torn) == len(listed) == 1, res.output
    assert "4242" in res.output  # the readable one is still shown
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    "content, why",
    [
        ("null", "expected a JSON object, got null"),
        ('"text"', "expected a JSON object, got str"),
        ('{"pid": 1, "calls": "many"}', "calls: Input should be a valid dictionary"),
        ('{"pid": 1, "errors": "boom"}', "errors: Input should be a valid list"),
    ],
)
def test_report_file_of_the_wrong_shape_is_one_line_error(tmp_path, content, why):
    f = tmp_path / "overlay-scheduler-tp0-1.json"
    f.write_text(content)
    res = report(str(f))
    assert res.exit_code == 1, res.output
    err = [ln for ln in res.output.splitlines() if "error:" in ln]
    assert len(err) == 1 and f"{f}: unreadable report: {why}" in err[0], res.output
    assert "Traceback" not in res.output


def test_report_of_an_empty_folder_fails(tmp_path):
    res = report(str(tmp_path))
    assert res.exit_code == 1 and "no overlay reports" in res.output
    (tmp_path / "overlay-scheduler-tp0-7.json").write_text(json.dumps(good_report()))
    assert report(str(tmp_path)).exit_code == 0


def test_report_shows_how_each_process_routes_calls_by_size(tmp_path):
    """The size routes a process recorded (`<op>_routes`) and its load-time warm-up (`<op>_warmup`) are shown per
    process, in the CLI and in report.md."""
    from speedrun.eval.report import overlay_section

    line = "w4a4 E=257 top-9: M <= 1827: speedrun MXFP4 kernels; M > 1827: stock FP8 block fused MoE"
    rep = good_report(4242) | {"mxfp4_moe_routes": [line], "mxfp4_gemm_routes": ["M > 1024: stock FP8"],
                               "mxfp4_moe_warmup": {"calls": 12, "seconds": 4.63}}  # fmt: skip
    (tmp_path / "overlay-scheduler-tp0-4242.json").write_text(json.dumps(rep))
    res = report(str(tmp_path))
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())  # the table folds long cells at 80 columns
    assert "stock FP8 block fused" in flat and "M > 1024: stock FP8" in flat, res.output
    assert "mxfp4_moe: 12 calls, 4.63 s" in flat, res.output
    md = "\n".join(overlay_section([rep]))
    assert "routes by size" in md and f"M > 1024: stock FP8; {line}" in md and "mxfp4_moe: 12 calls, 4.63 s" in md
    row = next(ln for ln in overlay_section([good_report()]) if ln.startswith("| scheduler"))
    assert [c.strip() for c in row.strip("|").split("|")][3] == "—"  # none recorded: a dash in that column
