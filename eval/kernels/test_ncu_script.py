"""scripts/device/ncu.sh and its driver: every default case names an impl the benches have, so a renamed impl
or model fails here, not on the GPU host; and the script parses."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the benches decorate kernels at import (see test_benches.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from speedrun.eval.kernels import mla_decode_bench, mxfp4_gemm_bench, mxfp4_moe_bench

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "device"


def default_cases() -> list[str]:
    text = (SCRIPTS / "ncu.sh").read_text()
    return re.search(r'CASES=\$\{CASES:-"([^"]*)"\}', text).group(1).split()


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPTS / "ncu.sh")], check=True)


def test_default_cases_name_known_impls() -> None:
    spec = importlib.util.spec_from_file_location("ncu_case", SCRIPTS / "ncu_case.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # imports cleanly on CPU
    cases = default_cases()
    assert any(c.startswith("mla:") for c in cases) and any(c.startswith("moe:") for c in cases)
    for case in cases:
        op, *f = case.split(":")
        if op == "mla":
            dtype, bs, kv, impl = f
            assert dtype in ("bf16", "fp8") and bs.isdigit() and (kv.isdigit() or kv == mla_decode_bench.MIXED)
            assert impl in mla_decode_bench.SETUP, case
        elif op == "moe":
            model, m, impl = f
            assert model in mxfp4_moe_bench.MODELS and m.isdigit(), case
            assert impl in mxfp4_moe_bench.impl_builders(mxfp4_moe_bench.MODELS[model]), case
        else:
            assert op == "gemm", case
            *mnk, impl = f
            assert all(v.isdigit() for v in mnk) and len(mnk) == 3, case
            assert impl in mxfp4_gemm_bench.IMPLS, case


def test_stall_summary_orders_reasons_and_keeps_units() -> None:
    """ncu_stalls.py on a raw-page CSV as ncu writes it (header, unit line, one row per launch)."""
    stalls = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
    header = ["ID", "Kernel Name", "gpu__time_duration.sum", stalls.format("barrier"), stalls.format("wait")]
    lines = [header, ["", "", "usecond", "", ""], ["0", "_mla_partial_kernel", "135.2", "0.70", "2.50"]]
    text = "\n".join(",".join(f'"{v}"' for v in line) for line in lines) + "\n"
    out = subprocess.run(["python3", str(SCRIPTS / "ncu_stalls.py")], input=text, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "_mla_partial_kernel" in out and "time 135.2 usecond" in out
    assert out.index("wait 2.50") < out.index("barrier 0.70")


def test_sass_top_splits_partitions_and_ranks_instructions() -> None:
    """ncu_sass_top.py on a two-kernel source-page CSV: per kernel the samples, each warp-specialized partition's
    share (split at USETMAXREG) and the instructions with the most samples, with their largest stall reasons."""
    hdr = '"Address","Source","Warp Stall Sampling (All Samples)","# Samples","stall_long_sb","stall_barrier",' \
          '"stall_barrier (Not Issued)"'  # fmt: skip
    rows = ['"0x0","USETMAXREG.DEALLOC.CTAPOOL 0x18","1","1","0","1","9"',
            '"0x1","LDS R1, [R2]","30","30","29","1","0"',
            '"0x2","USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0x58","0","0","0","0","0"', '"0x3","NOP","0","0","0","0","0"',
            '"0x4","NOP","0","0","0","0","0"', '"0x5","BAR.SYNC 0x0","69","69","0","69","0"']  # fmt: skip
    csv_text = "\n".join(['"Kernel Name","k_ws",', hdr, *rows, '"Kernel Name","k2",', hdr, rows[1]]) + "\n"
    out = subprocess.run(["python3", str(SCRIPTS / "ncu_sass_top.py"), "3"], input=csv_text, capture_output=True,
                         text=True, check=True).stdout.splitlines()  # fmt: skip
    assert out[0] == "k_ws: 100 samples, 6 instructions"
    assert out[1] == "  partitions (SASS between USETMAXREGs): #1 31.0%, #2 69.0%"
    assert out[2].split()[:4] == ["69.0%", "#2", "BAR.SYNC", "0x0"] and out[2].endswith("barrier 69")
    assert out[3].split()[:2] == ["30.0%", "#1"] and out[3].endswith("long_sb 29, barrier 1")
    assert out[5] == "k2: 30 samples, 1 instructions" and len(out) == 7
