"""Our client against a real local HTTP server that streams in SGLang's format (the fake server, served on
127.0.0.1 from a thread of this process; a subprocess where the server must die)."""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import pytest

from speedrun.eval.bench import Target, run_cases
from speedrun.eval.client import GenRequest, chunk_error, run_requests
from speedrun.eval.fakeserver import background
from speedrun.eval.metrics import summarize
from speedrun.eval.prompts import TokenPool
from speedrun.eval.results import ResultsFile, load_traces
from speedrun.eval.scenarios import Case
from speedrun.launch.command import LaunchSpec
from speedrun.launch.server import free_port, running

pytestmark = pytest.mark.timeout(60)


def reqs(n: int, isl: int = 16, osl: int = 8) -> list[GenRequest]:
    return [GenRequest(list(range(i, i + isl)), osl) for i in range(n)]


def test_bounded_concurrency_and_complete_traces():
    with background(tpot_ms=2, ttft_ms=5) as (url, st):
        traces, dur = asyncio.run(run_requests(url, reqs(24, osl=10), concurrency=6))
        assert st.max_inflight == 6 and st.requests == 24  # the semaphore held, and was saturated
    assert all(t.success and t.output_len == 10 and len(t.chunks) == 10 for t in traces)
    assert all(t.ttft >= 0.004 and t.latency >= t.chunks[-1][0] for t in traces)
    m = summarize(traces, dur)
    assert m["completed"] == 24 and m["total_output_tokens"] == 240 and m["total_input_tokens"] == 24 * 16
    assert 1.5 <= m["median_itl_ms"] < 50  # 2 ms per token, plus scheduling noise on a busy CI box
    assert m["duration_s"] >= 4 * 0.023  # 4 waves of >= 5 + 9 x 2 ms each


def test_multi_token_chunks_spread_itl():
    with background(tpot_ms=1, stream_interval=4) as (url, _):
        (t,), _ = asyncio.run(run_requests(url, reqs(1, osl=10), concurrency=1))
    assert [n for _, n in t.chunks] == [4, 8, 10]
    itl = t.itls()
    assert len(itl) == 6 and itl[0] == itl[3] and itl[4] == itl[5]  # each chunk's gap shared evenly


def test_http_error_is_a_failed_request():
    with background(max_len=20) as (url, _):
        traces, _ = asyncio.run(run_requests(url, reqs(2, isl=10) + reqs(1, isl=30), concurrency=3))
    assert [t.success for t in traces] == [True, True, False]
    assert "HTTP 400" in traces[2].error and "input too long" in traces[2].error


def test_timeout_cancels_and_says_why():
    with background(tpot_ms=50) as (url, _):
        t0 = time.monotonic()
        traces, _ = asyncio.run(run_requests(url, reqs(4, osl=200), concurrency=4, timeout_s=0.5))
    assert time.monotonic() - t0 < 5
    assert not any(t.success for t in traces)
    assert all("timed out" in t.error for t in traces) and all(0 < t.output_len < 200 for t in traces)


def test_stream_error_chunk_detection():
    assert chunk_error(b'{"error": {"message": "bad input", "code": 400}}') == "bad input"
    assert chunk_error(b'{"text": "x", "meta_info": {"finish_reason": {"type": "abort", "message": "oom"}}}')
    assert chunk_error(b'{"text": "an error here", "meta_info": {"completion_tokens": 1}}') is None


def fake_spec(port: int, *extra: str) -> LaunchSpec:
    argv = [sys.executable, "-m", "speedrun.eval.fakeserver", "--port", str(port), *extra]
    return LaunchSpec(argv=argv, env={}, side="overlay")


def test_server_death_mid_run_is_recorded(tmp_path):
    """The server dies during the 2nd case: it is recorded with the log tail, the 3rd is skipped, the
    1st stays in the results file."""
    pool = TokenPool(np.arange(10, 500), "test")
    cases = [
        Case(16, 8, 2, prompts=4, warmup=0),
        Case(16, 400, 2, prompts=6, warmup=0),
        Case(32, 8, 2, prompts=4, warmup=0),
    ]
    port = free_port()
    rf = ResultsFile.create(tmp_path / "overlay.json", side="overlay")
    with running(
        fake_spec(port, "--die-after", "7", "--tpot-ms", "2"),
        tmp_path / "server.log",
        port=port,
        timeout_s=30,
        show_progress=False,
    ) as srv:
        target = Target(srv.url, alive=srv.alive, log_tail=srv.log_tail)
        out = run_cases(
            cases, target, pool, rf, gpus=1, timeout_s=20, traces_dir=tmp_path / "traces", show_progress=False
        )
    assert [e["status"] for e in out] == ["ok", "partial", "skipped"]  # request 7 kills it: 5 or 6 finished
    assert 1 <= out[1]["metrics"]["completed"] <= 2 and out[2]["error"] == "server died"
    saved = ResultsFile.load(tmp_path / "overlay.json").data["scenarios"]
    assert [s["name"] for s in saved] == [c.name for c in cases]
    assert saved[0]["metrics"]["completed"] == 4 and "speedrun.eval.fakeserver" in saved[1]["log_tail"]
    assert len(load_traces(tmp_path / "traces" / f"server-{cases[0].name}.json.gz")) == 4


def test_finite_request_rate_spaces_arrivals():
    with background(tpot_ms=0, ttft_ms=0) as (url, _):
        traces, dur = asyncio.run(run_requests(url, reqs(6, osl=2), concurrency=6, request_rate=20.0, seed=1))
    starts = [t.start for t in traces]
    gaps = np.diff(starts)
    assert all(t.success for t in traces) and all(g > 0 for g in gaps)
    assert 0.05 < dur < 3.0 and starts == sorted(starts)  # ~6 arrivals at 20/s, not all at once
