"""The benches lose nothing (results.py): a baseline that raises or calls sys.exit is an error cell of its row and
the run goes on; the JSON holds every row done, after each row, after a bug, and after a SIGTERM from `timeout`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from speedrun.eval.kernels import mxfp4_gemm_bench as gemm
from speedrun.eval.kernels import results


def jit_fails() -> dict:
    raise RuntimeError("NVCC compilation failed: \n  (no output)\n")


def exits() -> dict:
    sys.exit("deep_gemm: giving up on this shape")


def exits_with_code() -> dict:
    sys.exit(3)


def timed(us: float):
    return lambda: {"us": us}


def fake_bench(res: results.Results, shapes: list[tuple[int, int, int]], seen: list[list[dict]]) -> None:
    """A bench's main loop with the GEMM bench's rows: ours times, the two FP8 baselines fail their own ways."""
    for m, n, k in shapes:
        cells = {"speedrun": timed(10.0), "fp8_deepgemm": jit_fails, "fp8_triton": exits, "bf16_cublas": timed(20.0)}
        for impl, fn in cells.items():
            res.add(results.attempt(gemm._row(impl, "H100", m, n, k, None), fn))
            seen.append(json.loads(res.path.read_text())["rows"])  # on disk as soon as it is done


def test_failing_baselines_are_error_cells_and_the_json_is_written_per_row(tmp_path: Path):
    out, seen = tmp_path / "mxfp4_gemm.json", []
    with results.recording(out, {"op": "mxfp4_gemm"}, gemm.plot, gemm.summary) as res:
        assert json.loads(out.read_text()) == {"meta": {"op": "mxfp4_gemm", "complete": False}, "rows": []}
        fake_bench(res, [(1, 2112, 7168), (16, 2112, 7168)], seen)
    assert [len(rows) for rows in seen] == list(range(1, 9))
    data = json.loads(out.read_text())
    assert data["meta"] == {"op": "mxfp4_gemm", "complete": True}
    by = {(r["m"], r["impl"]): r for r in data["rows"]}
    assert len(by) == 8 and by[(16, "speedrun")]["us"] == 10.0 and by[(16, "bf16_cublas")]["us"] == 20.0
    want = {
        **gemm._row("fp8_deepgemm", "H100", 1, 2112, 7168, None),
        "error": "RuntimeError: NVCC compilation failed: (no output)",
    }
    assert by[(1, "fp8_deepgemm")] == want
    assert by[(16, "fp8_triton")]["us"] is None
    assert by[(16, "fp8_triton")]["error"] == "SystemExit: deep_gemm: giving up on this shape"
    assert out.with_suffix(".png").stat().st_size > 0  # the plot of the rows, failing cells left out


def test_reason_is_one_bounded_line():
    assert results.attempt({}, exits_with_code) == {"us": None, "error": "SystemExit: 3"}
    long = results.reason(RuntimeError("a\n" * 400))
    assert "\n" not in long and len(long) == results.MAX_REASON and long.startswith("RuntimeError: a a")
    assert results.reason(SystemExit()) == "SystemExit"


def test_a_bug_in_the_bench_still_writes_the_rows_then_propagates(tmp_path: Path):
    out, printed = tmp_path / "bench.json", []
    with pytest.raises(KeyError), results.recording(out, {}, summary=lambda rows: printed.append(rows) or "") as res:
        res.add({"impl": "speedrun", "us": 1.0})
        raise KeyError("m")
    data = json.loads(out.read_text())
    assert data["rows"] == [{"impl": "speedrun", "us": 1.0}] and printed == [data["rows"]]
    assert data["meta"] == {"complete": False, "interrupted": "KeyError: 'm'"}


def test_a_failing_plot_is_one_line_and_the_summary_still_prints(tmp_path: Path, capsys):
    def broken(rows, path):
        raise ValueError("no backend")

    with results.recording(tmp_path / "x.json", {}, broken, lambda rows: "TABLE") as res:
        res.add({"us": 1.0})
    out = capsys.readouterr().out
    assert "x.json: plot failed (ValueError: no backend)" in out and "TABLE" in out


SCRIPT = """
import sys, time
from pathlib import Path
from speedrun.eval.kernels import results

def slow():  # a baseline still compiling when `timeout` fires: the signal must end the run, not this cell
    print("ready", flush=True)
    time.sleep(60)

with results.recording(Path(sys.argv[1]), {"op": "fake"}, summary=lambda rows: f"{len(rows)} rows") as res:
    res.add(results.attempt({"impl": "speedrun"}, lambda: {"us": 1.0}))
    res.add(results.attempt({"impl": "baseline"}, lambda: sys.exit(1)))
    res.add(results.attempt({"impl": "slow"}, slow))
    res.add({"impl": "never"})
"""


def test_sigterm_from_timeout_leaves_the_rows_done(tmp_path: Path):
    out = tmp_path / "dir with space" / "bench.json"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "Traceback" not in rest and f"interrupted by SIGTERM: the 2 rows done are in {out}" in rest
    assert "2 rows" in rest  # the summary of what was done
    data = json.loads(out.read_text())
    assert data["meta"] == {"op": "fake", "complete": False, "interrupted": "SIGTERM"}
    assert [(r["impl"], r["us"]) for r in data["rows"]] == [("speedrun", 1.0), ("baseline", None)]
    assert data["rows"][1]["error"] == "SystemExit: 1"
    assert not list(out.parent.glob("*.tmp"))
