"""Scenario metrics from request traces, defined as SGLang 0.5.17's `benchmark/serving.py:calculate_metrics`.

- duration: wall time of the measured run (first request sent -> last response done), warm-up excluded.
- throughputs: successful requests only (one that brought no token is failed); input tokens are the prompt
  lengths sent, output tokens the `completion_tokens` the server reported. total = (input + output) / duration;
  per GPU = total / GPUs.
- TTFT: first token-bearing chunk; TPOT: (latency - TTFT) / (output_len - 1) for requests with > 1 token;
  ITL: every chunk gap divided evenly over the tokens it brought; E2E: send -> last line.
- percentiles: numpy's default (linear); an empty list counts as [0], as in SGLang.
- interactivity: 1000 / median TPOT (ms) = tokens/s seen by one user (the finals' x axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from speedrun.eval.trace import RequestTrace


def _stats(name: str, values_s: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * 1000.0
    return {
        f"mean_{name}_ms": float(np.mean(arr)),
        f"median_{name}_ms": float(np.median(arr)),
        f"std_{name}_ms": float(np.std(arr)),
        f"p90_{name}_ms": float(np.percentile(arr, 90)),
        f"p99_{name}_ms": float(np.percentile(arr, 99)),
    }


def summarize(traces: Sequence[RequestTrace], duration_s: float, gpus: int = 1) -> dict[str, Any]:
    """All scenario metrics; `duration_s` is the measured run's wall time."""
    # a request that brought no token failed, whatever its flag says (traces saved before this rule): its TTFT
    # of 0 must not pull the mean down
    ok = [t for t in traces if t.success and t.output_len > 0]
    total_in = sum(t.prompt_len for t in ok)
    total_out = sum(t.output_len for t in ok)
    tpots = [x for x in (t.tpot() for t in ok) if x is not None]
    itls = [x for t in ok for x in t.itls()]
    dur = max(duration_s, 1e-9)
    out: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(traces) - len(ok),
        "duration_s": duration_s,
        "gpus": gpus,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur,
        "input_throughput": total_in / dur,
        "output_throughput": total_out / dur,
        "total_throughput": (total_in + total_out) / dur,
        "total_throughput_per_gpu": (total_in + total_out) / dur / gpus,
        "output_throughput_per_gpu": total_out / dur / gpus,
    }
    out |= _stats("ttft", [t.ttft for t in ok])
    out |= _stats("tpot", tpots)
    out |= _stats("itl", itls)
    e2e = _stats("e2e_latency", [t.latency for t in ok])
    out |= e2e
    med_tpot = out["median_tpot_ms"]
    out["interactivity"] = 1000.0 / med_tpot if med_tpot > 0 else None
    out["concurrency"] = sum(t.latency for t in ok) / dur  # achieved, as SGLang reports it
    return out
