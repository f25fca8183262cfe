"""Metric maths on hand-made traces: every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from speedrun.eval.metrics import summarize
from speedrun.eval.results import load_traces, save_traces
from speedrun.eval.sglang_driver import to_metrics
from speedrun.eval.trace import RequestTrace


def trace(prompt_len: int, chunks: list[tuple[float, int]], latency: float, ok: bool = True) -> RequestTrace:
    t = RequestTrace(prompt_len=prompt_len, max_new_tokens=chunks[-1][1] if chunks else 4)
    for at, n in chunks:
        t.add_chunk(at, n)
    t.latency, t.success = latency, ok
    return t


def test_single_trace_ttft_itl_tpot():
    # tokens at 0.1 s (1), 0.3 s (2), 0.4 s (4: two tokens in one chunk), stream ends at 0.5 s
    t = trace(10, [(0.1, 1), (0.3, 2), (0.3, 2), (0.4, 4)], 0.5)
    assert t.output_len == 4 and t.ttft == 0.1
    assert len(t.chunks) == 3  # the chunk that brought no new token is dropped
    assert t.itls() == pytest.approx([0.2, 0.05, 0.05])  # 0.1 s gap shared by the 2 tokens it brought
    assert t.tpot() == pytest.approx((0.5 - 0.1) / 3)
    assert trace(1, [(0.2, 1)], 0.3).tpot() is None  # one token: no TPOT (SGLang skips it too)


def test_summary_numbers_by_hand():
    a = trace(100, [(0.1, 1), (0.3, 2), (0.5, 3)], 0.6)  # tpot (0.6-0.1)/2 = 0.25, itl 0.2, 0.2
    b = trace(300, [(0.2, 1), (0.4, 3)], 0.5)  # tpot (0.5-0.2)/2 = 0.15, itl 0.1, 0.1
    c = trace(50, [], 0.05, ok=False)  # failed: counted, not measured
    m = summarize([a, b, c], duration_s=2.0, gpus=2)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert m["total_input_tokens"] == 400 and m["total_output_tokens"] == 6
    assert m["total_throughput"] == pytest.approx(406 / 2.0)
    assert m["total_throughput_per_gpu"] == pytest.approx(406 / 2.0 / 2)
    assert m["output_throughput"] == pytest.approx(3.0)
    assert m["mean_ttft_ms"] == pytest.approx(150.0) and m["median_ttft_ms"] == pytest.approx(150.0)
    assert m["median_tpot_ms"] == pytest.approx(200.0)  # median of 250 and 150
    assert m["interactivity"] == pytest.approx(1000.0 / 200.0)
    assert m["mean_itl_ms"] == pytest.approx(150.0)  # [200, 200, 100, 100]
    assert m["p90_itl_ms"] == pytest.approx(200.0)
    assert m["p90_tpot_ms"] == pytest.approx(240.0)  # linear: 150 + 0.9 * 100
    assert m["median_e2e_latency_ms"] == pytest.approx(550.0)
    assert m["concurrency"] == pytest.approx((0.6 + 0.5) / 2.0)


def test_all_failed_is_zero_not_nan():
    m = summarize([trace(5, [], 0.0, ok=False)], 1.0)
    assert m["completed"] == 0 and m["total_throughput"] == 0.0
    assert m["median_ttft_ms"] == 0.0 and m["interactivity"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


def test_a_tokenless_success_is_a_failure():
    """A trace flagged successful that brought no token (saved before the client's rule) is counted as failed
    and kept out of TTFT: its TTFT of 0 would halve this mean."""
    a = trace(10, [(0.2, 1), (0.4, 2)], 0.5)
    empty = trace(10, [], 0.1)  # ok=True, no chunk
    m = summarize([a, empty], 1.0)
    assert (m["completed"], m["failed"]) == (1, 1)
    assert m["mean_ttft_ms"] == pytest.approx(200.0) and m["total_input_tokens"] == 10


def test_traces_roundtrip(tmp_path):
    ts = [trace(7, [(0.01, 1), (0.02, 3)], 0.03), trace(8, [], 0.0, ok=False)]
    ts[1].error = "HTTP 400"
    save_traces(tmp_path / "t.json.gz", ts)
    back = load_traces(tmp_path / "t.json.gz")
    assert [(t.prompt_len, t.chunks, t.success, t.error) for t in back] == [
        (t.prompt_len, t.chunks, t.success, t.error) for t in ts
    ]
    assert summarize(back, 1.0) == summarize(ts, 1.0)


def test_sglang_row_mapping():
    row = {
        "duration": 10.0,
        "completed": 9,
        "total_input_tokens": 900,
        "total_output_tokens": 90,
        "total_throughput": 99.0,
        "output_throughput": 9.0,
        "median_tpot_ms": 20.0,
        "p99_ttft_ms": 5.0,
    }
    m = to_metrics(row, prompts=10, gpus=2)
    assert m["failed"] == 1 and m["duration_s"] == 10.0
    assert m["total_throughput_per_gpu"] == pytest.approx(49.5) and m["interactivity"] == pytest.approx(50.0)
    assert m["p99_ttft_ms"] == 5.0
