"""SGLang's real router (the `sglang-router` package) in front of fake SGLang servers on 127.0.0.1, started and torn
down by `speedrun launch` as one unit: `speedrun bench` through it spreads over the replicas, a replica killed
mid-bench is routed around and reported, PD mode pairs a prefill and a decode server per request, and Ctrl-C
(once, or twice while a server ignores SIGTERM) leaves no process and no port behind. Real processes, real signals;
the servers are eval/fakeserver.py behind a small `sglang` package on PYTHONPATH (as in test_faults.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_faults import Speedrun, assert_gone, group_alive

from speedrun.launch.server import free_port, port_in_use

pytest.importorskip("sglang_router", reason="SGLang's router: pip install -e '.[dev]'")
pytestmark = pytest.mark.timeout(240)
PROMPTS = 9


@pytest.fixture
def run_cli(tmp_path):
    """`speedrun ARGS` as a real process (test_faults.Speedrun); whatever a failed test left running is killed."""
    started: list[Speedrun] = []

    def start(args: list[str], **side_opts: str) -> Speedrun:
        started.append(Speedrun(args, tmp_path, **side_opts))
        return started[-1]

    yield start
    for s in started:
        s.kill_all()


def deploy_recipe(tmp_path: Path, workers: list[dict], gpus: int, **deployment) -> Path:
    """A one-node deployment of fake servers; its ports free now (worker ports, then bootstrap ports)."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    n = sum(w.get("replicas", 1) for w in workers)
    base = free_port()
    while base > 64990 or any(port_in_use("127.0.0.1", base + k) for k in range(2 * n)):
        base = free_port()
    scenario = {"isl": 32, "osl": 16, "concurrency": [1], "prompts_per_concurrency": PROMPTS,
                "warmup_per_concurrency": 0}  # fmt: skip
    recipe = {
        "name": "fake-deploy",
        "model": {"path": str(model)},
        "hardware": {"platform": "cuda", "arch": "sm90", "gpus": gpus},
        "overlays": {"mla_decode": {"enabled": True}},
        "deployment": {"nodes": 1, "workers": workers, "worker_port": base, "bootstrap_port": base + n,
                       "router": {"policy": "round_robin", "health_check_interval_s": 1}, **deployment},
        "benchmarks": {"scenarios": [scenario], "timeout_s": 60},
    }  # fmt: skip
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def router_port(recipe: Path) -> int:
    """A free port outside the recipe's worker/bootstrap range (those are not bound yet either)."""
    base, port = yaml.safe_load(recipe.read_text())["deployment"]["worker_port"], free_port()
    while base <= port < base + 16:
        port = free_port()
    return port


def info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/server_info", timeout=5) as r:
        return json.loads(r.read())


class Deployment:
    """`speedrun launch RECIPE` serving: its router port and pid, and per instance its URL and server pid."""

    def __init__(self, run_cli, tmp_path: Path, recipe: Path, **side_opts: str):
        self.port = router_port(recipe)
        args = ["launch", str(recipe), "--port", str(self.port), "--out", str(tmp_path / "runs")]
        self.cli = run_cli(args, **side_opts)
        self.cli.wait_for("serving; Ctrl-C", 120, where="out")
        out = "".join(self.cli.out)
        self.router_pid = int(re.search(r"router \(pid (\d+)\) at", out).group(1))
        self.urls = dict(re.findall(r"((?:mixed|prefill|decode)-\d+)\s*│[^│]*│\s*(http://127\.0\.0\.1:\d+)", out))
        run_dir = tmp_path / "runs" / "fake-deploy-overlay"
        self.metrics_port = int(re.search(r"--prometheus-port (\d+)", (run_dir / "router.log").read_text()).group(1))
        self.pids = {}
        for log in (run_dir / "logs").glob("*-node0.log"):
            m = re.search(r"fake sglang \(\w+\) on [\d.]+:\d+ pid (\d+)", log.read_text())
            self.pids[log.name.removesuffix("-node0.log")] = int(m.group(1))
        self.cli.pgids += [self.router_pid, *self.pids.values()]  # SIGKILLed if the test fails

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bench(self, recipe: Path, out: Path) -> subprocess.Popen:
        argv = [sys.executable, "-m", "speedrun.cli", "bench", str(recipe), "--server", self.url, "--out", str(out),
                "--no-progress"]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def assert_all_gone(self) -> None:
        assert_gone(self.router_pid, self.port)
        assert not port_in_use("127.0.0.1", self.metrics_port), "the router's metrics port is still bound"
        for name, pid in self.pids.items():
            assert_gone(pid, int(self.urls[name].rsplit(":", 1)[1]))


def completed(bench_out: Path) -> dict:
    (case,) = json.loads((bench_out / "overlay.json").read_text())["scenarios"]
    return case


def test_bench_through_the_router_spreads_and_survives_a_dead_replica(tmp_path, run_cli):
    recipe = deploy_recipe(tmp_path, [{"replicas": 3}], gpus=3)
    d = Deployment(run_cli, tmp_path, recipe, overlay="--tpot-ms 15")
    assert sorted(d.urls) == sorted(d.pids) == ["mixed-0", "mixed-1", "mixed-2"], "".join(d.cli.out)
    bench = d.bench(recipe, tmp_path / "bench")
    # concurrency 1 and round robin: kill mixed-1 between two of its requests, once it has served one
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        before = info(d.urls["mixed-1"])
        if before["requests"] >= 1 and before["inflight"] == 0:
            os.killpg(d.pids["mixed-1"], signal.SIGKILL)
            break
        time.sleep(0.02)
    out, _ = bench.communicate(timeout=120)
    assert bench.returncode == 0, out
    case = completed(tmp_path / "bench")
    assert case["status"] == "ok" and case["metrics"]["completed"] == PROMPTS, case
    survivors = [info(d.urls[n])["requests"] for n in ("mixed-0", "mixed-2")]
    assert min(survivors) >= 2 and sum(survivors) + before["requests"] == PROMPTS, (survivors, before)
    pid, port = d.pids["mixed-1"], d.urls["mixed-1"].rsplit(":", 1)[1]
    d.cli.wait_for(rf"overlay mixed-1 server \(pid {pid}, pgid {pid}, port {port}\) exited with code -9", 20)
    d.cli.wait_for(rf"router: mixed-1 \({re.escape(d.urls['mixed-1'])}\) is marked unhealthy", 30)
    d.cli.proc.send_signal(signal.SIGINT)
    assert d.cli.proc.wait(60) == 130, d.cli.stderr
    d.assert_all_gone()
    assert f"stopped router server (pid {d.router_pid}" in d.cli.stderr and "Traceback" not in d.cli.stderr


def test_second_ctrl_c_kills_router_and_every_replica(tmp_path, run_cli):
    """Replicas that ignore SIGTERM (and a worker in each group): the first Ctrl-C stops the router and waits for
    them; the second escalates every group still alive to SIGKILL at once; nothing is left."""
    recipe = deploy_recipe(tmp_path, [{"replicas": 2}], gpus=2)
    d = Deployment(run_cli, tmp_path, recipe, overlay="--ignore-sigterm")
    d.cli.proc.send_signal(signal.SIGINT)
    d.cli.wait_for(r"stopped router server", 30)
    time.sleep(0.5)
    assert d.cli.proc.poll() is None and all(group_alive(p) for p in d.pids.values())  # waiting on the replicas
    t0 = time.monotonic()
    d.cli.proc.send_signal(signal.SIGINT)
    assert d.cli.proc.wait(30) == 130, d.cli.stderr
    assert time.monotonic() - t0 < 15, "the second Ctrl-C did not cut the 20 s grace short"
    d.assert_all_gone()
    assert "SIGINT again: escalating to SIGKILL" in d.cli.stderr and "Traceback" not in d.cli.stderr


def test_pd_router_pairs_a_prefill_and_a_decode_server_per_request(tmp_path, run_cli):
    """PD mode of the real router over one fake prefill and one fake decode server: each request goes to both
    with the same bootstrap room (the fakes do not move a KV cache: this checks the routing, not MoRI/Mooncake)."""
    workers = [{"role": "prefill"}, {"role": "decode"}]
    recipe = deploy_recipe(tmp_path, workers, gpus=2, transfer_backend="mooncake")
    d = Deployment(run_cli, tmp_path, recipe)
    assert sorted(d.urls) == ["decode-0", "prefill-0"]
    logs = tmp_path / "runs" / "fake-deploy-overlay" / "logs"
    assert "--disaggregation-mode prefill" in (logs / "prefill-0-node0.log").read_text()
    bench = d.bench(recipe, tmp_path / "bench")
    out, _ = bench.communicate(timeout=120)
    assert bench.returncode == 0, out + d.cli.stderr
    assert completed(tmp_path / "bench")["metrics"]["completed"] == PROMPTS
    p, dec = info(d.urls["prefill-0"]), info(d.urls["decode-0"])
    rooms = set(p["bootstrap_rooms"])  # the router may retry a request: count rooms, not requests
    assert len(rooms) == PROMPTS and rooms == set(dec["bootstrap_rooms"]), (p, dec, d.cli.stderr)
    d.cli.proc.send_signal(signal.SIGTERM)
    assert d.cli.proc.wait(60) == 143, d.cli.stderr
    d.assert_all_gone()


def test_bench_without_server_starts_the_deployment_and_its_router(tmp_path, run_cli):
    """`speedrun bench RECIPE` of a one-node deployment: every replica and the router come up, the bench runs
    through the router, the results say what was launched and hold every process's overlay report, and nothing
    is left after."""
    recipe = deploy_recipe(tmp_path, [{"replicas": 2}], gpus=2)
    base = yaml.safe_load(recipe.read_text())["deployment"]["worker_port"]
    cli = run_cli(["bench", str(recipe), "--out", str(tmp_path / "bench"), "--no-progress"])
    assert cli.proc.wait(120) == 0, cli.stderr + "".join(cli.out)
    data = json.loads((tmp_path / "bench" / "overlay.json").read_text())
    (case,) = data["scenarios"]
    assert case["status"] == "ok" and case["metrics"]["completed"] == PROMPTS and data["gpus"] == 2
    assert data["launch"].count("-m sglang.launch_server") == 2 and "-m sglang_router.launch_router" in data["launch"]
    reports = data["overlay_reports"]
    assert len(reports) == 2 and sum(sum(r["calls"].values()) for r in reports) == PROMPTS  # both replicas served
    assert min(sum(r["calls"].values()) for r in reports) >= 1
    assert not port_in_use("127.0.0.1", base) and not port_in_use("127.0.0.1", base + 1)
    assert "stopped router server" in cli.stderr


def test_a_server_that_dies_at_start_up_is_one_error(tmp_path, run_cli):
    """A replica exits before it is healthy (here: a bad option value; the fake server tolerates unknown SGLang
    flags, as speedrun baseline needs): one error with its log tail, exit 1, no port left."""
    recipe = deploy_recipe(tmp_path, [{"replicas": 2}], gpus=2)
    base = yaml.safe_load(recipe.read_text())["deployment"]["worker_port"]
    cli = run_cli(["launch", str(recipe), "--port", str(router_port(recipe)), "--out", str(tmp_path / "runs")],
                  overlay="--tpot-ms not-a-number")  # fmt: skip
    assert cli.proc.wait(60) == 1, cli.stderr
    assert re.search(r"error: overlay mixed-\d server \(pid \d+, pgid \d+, port \d+\) exited with code 2 before "
                     r"the deployment was healthy", cli.stderr), cli.stderr  # fmt: skip
    assert "argument --tpot-ms: invalid float value: 'not-a-number'" in cli.stderr  # the log tail
    assert not port_in_use("127.0.0.1", base) and not port_in_use("127.0.0.1", base + 1)
    assert "Traceback" not in cli.stderr


def test_a_taken_port_stops_the_servers_already_started(tmp_path, run_cli):
    """mixed-1's port is taken: mixed-0, already started, is torn down with the one-line error (exit 1)."""
    import socket

    with socket.socket() as taken:
        # SO_REUSEADDR: base + 1 may linger in TIME_WAIT from an earlier test (connect-free, yet bind would fail);
        # a listening socket still keeps the server out. Another process may hold it: take a fresh range then.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(20):
            recipe = deploy_recipe(tmp_path, [{"replicas": 2}], gpus=2)
            base = yaml.safe_load(recipe.read_text())["deployment"]["worker_port"]
            try:
                taken.bind(("127.0.0.1", base + 1))
                break
            except OSError:
                continue
        taken.listen()
        cli = run_cli(["launch", str(recipe), "--port", str(router_port(recipe)), "--out", str(tmp_path / "runs")])
        assert cli.proc.wait(60) == 1, cli.stderr
    assert f"error: port {base + 1} on 127.0.0.1 is already in use" in cli.stderr
    m = re.search(rf"stopped overlay mixed-0 server \(pid (\d+), pgid \d+, port {base}\)", cli.stderr)
    assert m, cli.stderr
    assert_gone(int(m.group(1)), base)
