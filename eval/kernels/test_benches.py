"""The op benches' CPU-checkable pieces: which shapes get the FP8 baselines, bytes per format, the DeepSeek MoE
model (fused shared expert), shape options, and reports on fake rows."""

from __future__ import annotations

import argparse
import os

import torch

# Importing the benches decorates the kernels: as in the overlays' CPU tests, the interpreter where there is no GPU,
# set before any kernel module is imported (this module may be collected before theirs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from speedrun.eval.kernels import mla_decode_bench as mla
from speedrun.eval.kernels import mxfp4_gemm_bench as gemm
from speedrun.eval.kernels import mxfp4_moe_bench as moe


def test_gemm_deepseek_tp8_slice_and_fp8_rows():
    tp8 = gemm.deepseek_tp8_nk()
    assert tp8 == {"fused_qkv_a": (2112, 7168), "q_b": (3072, 1536), "kv_b": (4096, 512),
                   "dense_gate_up": (4608, 7168), "o_proj": (7168, 2048), "dense_down": (7168, 2304)}  # fmt: skip
    shapes = gemm.shapes()
    assert len(shapes) == len(set(shapes))
    for n, k in tp8.values():
        assert {(m, n, k) for m in (1, 16, 64, 4096)} <= set(shapes)
    assert gemm.impls_for(3072, 1536) == gemm.IMPLS  # TP8 q_b: every baseline
    plain = ("speedrun", "dequant_cublas", "bf16_cublas")
    assert gemm.impls_for(2880, 512) == plain  # GPT-OSS: no FP8 stock path
    assert gemm.impls_for(24576, 1536) == plain  # TP1 q_b: the FP8 baseline is measured on the TP8 slice


def test_gemm_bytes_per_format_and_rows():
    m, n, k = 16, 2112, 7168
    act = m * k * 2 + m * n * 2
    assert gemm._bytes(m, n, k, "mxfp4") == n * k // 2 + n * k // 32 + act
    assert gemm._bytes(m, n, k, "fp8") == n * k + 17 * 56 * 4 + act  # 2112 rows: 17 scale blocks
    assert gemm._bytes(m, n, k, "bf16") == n * k * 2 + act
    fp8 = gemm._row("fp8_deepgemm", "H100", m, n, k, 10.0)
    assert fp8["gbps"] == round(gemm._bytes(m, n, k, "fp8") / 10.0 / 1e3, 1)
    err = gemm._row("fp8_deepgemm", "H100", m, n, k, None, "RuntimeError: " + "x" * 400)
    assert err["us"] is None and len(err["error"]) == 300


def test_gemm_prefill_rows_run_the_stock_fp8_route():
    """Every M > 1024 shape of the bench is in the sm90 table's stock_fp8 bucket (a CUDA sm90 with DeepGEMM runs
    it: the measured TP8 prefill shapes among them); the row says which route ran, and why not when it fell back."""
    from speedrun.overlays.mxfp4_gemm import api

    prefill = [(m, n, k) for m, n, k in gemm.shapes() if m > 1024]
    assert {(4096, 2112, 7168), (4096, 3072, 1536), (4096, 4096, 512)} <= set(prefill)
    for m, n, k in prefill:
        plan = api.stock_routes(api.make_plan(n, k, "swz128", device="cpu", arch="sm90"), None)
        assert plan.launch(m).route == "stock_fp8", (m, n, k)
    row = gemm.speedrun_route(4096, 2112, 7168, torch.device("cpu"))  # the interpreter: dequant_w, with the reason
    assert row["bucket"] == "m>1024" and row["route"] == "dequant_w" and "CUDA-only" in row["route_why"]
    assert gemm.speedrun_route(16, 2112, 7168, torch.device("cpu")) == {"bucket": "m<=16", "route": "fused"}


def test_gemm_summary_shows_every_baseline():
    rows = [gemm._row(i, "H100", 16, 2112, 7168, us) for i, us in
            (("speedrun", 4.0), ("fp8_deepgemm", 6.0), ("fp8_triton", 8.0), ("dequant_cublas", 40.0),
             ("bf16_cublas", 12.0))]  # fmt: skip
    rows[0]["route"] = "fused"
    text = gemm.summary(rows)
    assert all(f"x {b}" in text for b in gemm.BASELINES)
    assert text.splitlines()[1].split()[-5:] == ["1.50", "2.00", "10.00", "3.00", str(rows[0]["pct_hbm_peak"])]


def test_shape_options():
    assert gemm.parse_shape("16x2112x7168") == (16, 2112, 7168)
    assert mla.parse_shape("4:1024:bf16") == (4, 1024, torch.bfloat16)
    assert mla.parse_shape(f"256:{mla.MIXED}:fp8") == (256, mla.MIXED, torch.float8_e4m3fn)
    for bad in ("16x2112", "axbxc"):
        with pytest.raises(argparse.ArgumentTypeError, match="MxNxK"):
            gemm.parse_shape(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="BS:KV:DTYPE"):
        mla.parse_shape("4:1024:fp16")


def test_moe_deepseek_model_fuses_the_shared_expert():
    ds = moe.MODELS["deepseek-r1-mxfp4-tp8"]
    assert (ds.experts, ds.topk, ds.hidden, ds.inter, ds.shared) == (257, 9, 7168, 256, 1)
    assert ds.baselines == ("fp8_fused_moe", "dequant_fused_moe")
    assert set(ds.baselines) <= set(moe.BUILDERS)
    assert moe.MS == (1, 4, 16, 32, 64, 128, 512, 1024, 2048, 4096)


def test_moe_stock_route_is_timed_at_prefill_sizes_only():
    """The large-M route (conversion + stock FP8 MoE) runs at M >= 512, next to ours and stock at those Ms."""
    assert moe.ms_for(moe.STOCK_ROUTE, moe.MS) == (512, 1024, 2048, 4096)
    assert moe.ms_for(moe.OURS, moe.MS) == moe.MS and moe.ms_for("fp8_fused_moe", moe.MS) == moe.MS
    impls = (moe.OURS, moe.STOCK_ROUTE, "fp8_fused_moe")
    rows = [{"impl": i, "model": "ds", "m": m, "us": 10.0} for i in impls for m in moe.ms_for(i, (16, 512))]
    assert len(rows) == 5 and "x speedrun_stock_fp8" in moe.summary(rows)


def test_moe_speedrun_rows_say_where_the_hook_serves_the_route():
    """The `speedrun` row times our kernels at every M; where the sm90 table routes the bucket to stock's FP8 MoE
    (DeepSeek from M 1828) the row says so and names the route's row (round 10 read 3304 µs of our kernels as the
    route's time and moved M 1828-7310 off it)."""
    ds = moe.MODELS["deepseek-r1-mxfp4-tp8"]
    e, topk = ds[0], ds[1]
    assert moe.route_note(True, moe.bucket_key("w4a4", 1024, topk, e)) is None
    for m in (2048, 4096, 8192):
        assert moe.STOCK_ROUTE in moe.route_note(True, moe.bucket_key("w4a4", m, topk, e))
    assert moe.route_note(False, moe.bucket_key("w4a16", 8192, 4, 128)) is None


def test_moe_summary_per_model():
    rows = [{"impl": i, "model": "ds", "m": 1, "us": us, "pct_hbm_peak": 20.0} for i, us in
            (("speedrun", 10.0), ("fp8_fused_moe", 25.0), ("dequant_fused_moe", 30.0))]  # fmt: skip
    text = moe.summary(rows)
    assert "x fp8_fused_moe" in text and "2.50" in text and "3.00" in text


def test_mla_summary_per_shape():
    rows = [{"impl": i, "kv_dtype": "bf16", "kv_len": 8192, "bs": 4, "us": us} for i, us in
            (("speedrun", 10.0), ("sglang_triton", 20.0), ("flashinfer", None), ("flashmla", 12.0))]  # fmt: skip
    rows[2]["error"] = "ImportError"
    line = mla.summarize(rows).splitlines()[1].split()
    assert line[:7] == ["bf16", "8192", "4", "10.0", "20.0", "error", "12.0"] and line[7:10] == ["2.00", "-", "1.20"]


@pytest.mark.parametrize("variant", list(moe.SWEEP_VARIANTS))
def test_moe_every_sweep_variant_builds_a_config(variant):
    """Each sweep variant lays its knobs over a shipped bucket (a variant that sets dot_scaled once broke this)."""
    from speedrun.overlays.mxfp4_moe import api

    base = next(iter(api.table("sm90").values()))
    cfg, layout = moe.variant_cfg(base, moe.SWEEP_VARIANTS[variant])
    assert layout == moe.SWEEP_VARIANTS[variant].get("layout", moe.CUDA_LAYOUT)
    for knob, value in moe.SWEEP_VARIANTS[variant].items():
        if knob not in moe.VARIANT_META:
            assert getattr(cfg, knob) == value
    assert cfg.dot_scaled == (variant == "dot_scaled")


def test_moe_sweep_times_w4a4_variants_on_deepseek_only_first_and_fits_a_step():
    """The w4a4 variants are timed on DeepSeek (right after the config), never on GPT-OSS's w4a16 experts;
    DeepSeek's shapes come first and include M 4, 32 (the c32 decode step), 64 and 512; the prefill variants run
    only at each model's prefill Ms (both models 4096 and 8192: 8192 is an 8k-token chunk), last, next to the
    config alone; a variant that runs the config's kernels at an M is not timed there; every row fits a 120 s
    device step at round 10's rate (prefill rows at their own, higher guess)."""
    a4 = [k for k, v in moe.SWEEP_VARIANTS.items() if v.get("fmt") == "w4a4" and not v.get("prefill")]
    assert len(a4) == 4 and list(moe.sweep_variants("w4a4"))[: 1 + len(a4)] == ["config", *a4]
    assert not set(a4) & set(moe.sweep_variants("w4a16"))
    # the plain layout under the table's config is the bench's speedrun_plain impl: not timed twice
    assert all(v.get("layout") != "plain" for v in moe.SWEEP_VARIANTS.values() if set(v) <= {"layout", "fmt"})
    ds = "deepseek-r1-mxfp4-tp8"
    assert list(moe.SWEEP_MS)[0] == ds and {4, 32, 64, 512} <= set(moe.SWEEP_MS[ds])
    for name, fmt, ms in ((ds, "w4a4", [4096, 8192]), ("gpt-oss-120b", "w4a16", [4096, 8192])):
        prefill = [k for k, v in moe.SWEEP_VARIANTS.items() if v.get("prefill") and v["fmt"] == fmt]
        plan = moe.sweep_plan(name)
        assert [m for m, v in plan if set(v) & set(prefill)] == ms and prefill
        assert all(set(v) <= {"config", *prefill} for m, v in plan if m in ms)
        assert [m for m, _ in plan if moe.is_prefill(moe.MODELS[name], m)] == ms
    cells = [(moe.is_prefill(moe.MODELS[name], m), len(v)) for name in moe.SWEEP_MS for m, v in moe.sweep_plan(name)]
    seconds = sum(n * (moe.SWEEP_PREFILL_ROW_S if pre else moe.SWEEP_ROW_S) for pre, n in cells)
    assert seconds <= 120, seconds


def test_moe_sweep_leaves_out_variants_that_run_the_config():
    """A variant whose knobs the bucket already has at an M (GPT-OSS's p16_bn128 is the tpe<=256 bucket itself,
    split1 is a no-op where the config's GEMM1 is unsplit) is not timed there; the ws engine's prefill rows are,
    on both models, at M 4096 and 8192."""
    for name in moe.SWEEP_MS:
        model = moe.MODELS[name]
        for m, variants in moe.sweep_plan(name):
            fmt = "w4a4" if model.w4a4 else "w4a16"
            base = moe.table("sm90")[moe.bucket_key(fmt, m, model.topk, model.experts, "sm90")]
            runs = [moe.variant_cfg(base, v) for v in variants.values()]
            assert len({(c.model_dump_json(), lay) for c, lay in runs}) == len(runs), (name, m)
    gptoss = dict(moe.sweep_plan("gpt-oss-120b"))
    assert "p16_bn128" not in gptoss[4096] and "ws_p64" in gptoss[4096]
    ds = dict(moe.sweep_plan("deepseek-r1-mxfp4-tp8"))
    assert {"ws_p64_a4", "ws_p128_a4"} <= set(ds[4096]) & set(ds[8192])


def test_gemm_sweep_times_b_regs_at_a_prequant_shape_first_and_keeps_its_rows():
    """Round 5's b_regs question is timed first, at a prequant M (128 < M <= 1024 runs A_MODE 0, the kernel it
    changes) and only there; decode shapes time every other variant as before (m32_r80 at M 32 only): one shape's
    rows more, 2 in all."""
    from speedrun.overlays.mxfp4_gemm import api

    m, n, k = gemm.SWEEP_SHAPES[0]
    assert 64 < m <= 1024 and api.pick_config(m, n, k, "sm90").route == "prequant"
    assert gemm.sweep_variants(m) == ("config", "bregs")
    decode = [v for v in gemm.SWEEP_VARIANTS if v != "bregs" and v not in gemm.ONLY_M]
    rows = 2
    for m_s, _, _ in gemm.SWEEP_SHAPES[1:]:  # every decode variant, plus those meant for this M's bucket only
        only = [v for v, ms in gemm.ONLY_M.items() if m_s in ms]
        got = gemm.sweep_variants(m_s)
        assert got[0] == "config" and sorted(got[1:]) == sorted(decode + only), m_s
        rows += len(got)
    assert sum(s[0] == 32 for s in gemm.SWEEP_SHAPES) == 3 and "m32_r80" in gemm.sweep_variants(32)
    assert "m32_r80" not in gemm.sweep_variants(16) and "ws_st6" not in gemm.sweep_variants(64)
    assert sum(len(gemm.sweep_variants(s[0])) for s in gemm.SWEEP_SHAPES) == rows
    base = api.table("sm90").buckets[api.bucket_key(m, "sm90")]
    cfg, layout = gemm.variant_config(base, "bregs", api.bucket_key(m, "sm90"), "swz128")
    assert layout == "swz128" and cfg.with_overrides(cfg.swz).b_regs and not base.with_overrides(base.swz).b_regs


def test_mla_sweep_fits_its_budget_fp8_first():
    """The sweep's timed cells fit the device step at round 3's measured rate, fp8 shapes (round 5's questions)
    come first, every variant has a row in every cell, and a variant is re-timed only where its kernels differ
    from an earlier one's (fp8-only variants on bf16 caches; `gluon_ws` on sm90, which ships it)."""
    cells = mla.sweep_plan("sm90")
    assert len(cells) == 2 * len(mla.SWEEP_SHAPES)
    assert [c.dtype for c in cells] == [torch.float8_e4m3fn] * 7 + [torch.bfloat16] * 7
    assert all([v for v, _ in c.runs] == list(mla.VARIANTS) for c in cells)
    fp8, bf16 = dict(cells[0].runs), dict(cells[-1].runs)
    # sm90 ships the warp-specialized Gluon a8w8 kernel at one program per SM (round 11): gluon_ws is the table;
    # round 9's kernel (PV in flight, one V slice), round 8's gluon_pps1 and a16 are timed
    assert fp8["gluon_ws"] == "default" and fp8["gluon_pps1_pipe_cvt64"] is None and fp8["gluon_pps1"] is None
    assert fp8["a16"] is None
    assert fp8["fp8_n64_w8"] is None
    assert all(bf16[v] == "default" for v in mla.VARIANTS if v.startswith(("fp8_", "a8w8_")))
    assert bf16["kv16_gluon"] is None and fp8["kv16_gluon"] == "default"  # the Gluon kernel on bf16 caches only
    fp8_s = sum(c.timed for c in cells[:7]) * mla.SWEEP_S_PER_CELL
    assert fp8_s <= 0.7 * mla.SWEEP_BUDGET_S  # the fp8 half with room for slower compiles (a8w8, 8 warps)
    assert sum(c.timed for c in cells) * mla.SWEEP_S_PER_CELL <= mla.SWEEP_BUDGET_S


def test_mla_sweep_variants_narrow_it_to_the_served_table_and_those(tmp_path):
    """--variants times only the named variants next to `default` (the table as served), on both caches; a name
    the sweep does not know is refused in one line before any GPU work."""
    cells = mla.sweep_plan("sm90", ("default", "gluon_ws_lazy"))
    assert all([v for v, _ in c.runs] == ["default", "gluon_ws_lazy"] for c in cells)
    fp8, bf16 = dict(cells[0].runs), dict(cells[-1].runs)
    assert fp8["gluon_ws_lazy"] is None and bf16["gluon_ws_lazy"] == "default"  # fp8-only: bf16 rows reuse it
    assert mla.main(["--out", str(tmp_path), "--sweep", "--variants", "gluon_ws_lazy,nope"]) == 2


def test_gemm_sweep_variants_option_names_the_unknown_row(capsys):
    """`--variants` keeps the named rows (and the config's); an unknown name is a one-line usage error naming it."""
    with pytest.raises(SystemExit) as exc:
        gemm.main(["--sweep", "--variants", "ws,nope"])
    assert exc.value.code == 2 and "unknown nope" in capsys.readouterr().err


def test_moe_sweep_times_the_route_where_the_hook_serves_it():
    """At DeepSeek's prefill buckets the config's sweep row is the stock route the hook serves (so `kernels tune`
    weighs the ws rows against it, not against our kernels there); the ws rows run ours; GPT-OSS's experts and
    ROCm never take the route."""
    from types import SimpleNamespace

    from speedrun.overlays.mxfp4_moe.config import Act, Fmt

    deepseek = SimpleNamespace(fmt=Fmt.W4A4, act=Act.SILU, b13=None, b2=None)
    gptoss = SimpleNamespace(fmt=Fmt.W4A16, act=Act.SWIGLU_OAI, b13=1, b2=1)
    for bucket in ("w4a4:tpe<=256", "w4a4:tpe>256"):
        base = moe.table("sm90")[bucket]
        assert moe.route_served(base, deepseek, "sm90") and not moe.route_served(base, deepseek, "gfx950")
        for v in ("ws_p64_a4", "ws_p128_a4"):
            assert not moe.route_served(moe.variant_cfg(base, moe.SWEEP_VARIANTS[v])[0], deepseek, "sm90")
    assert not moe.route_served(moe.table("sm90")["w4a4:tpe<=64"], deepseek, "sm90")
    assert not moe.route_served(moe.table("sm90")["w4a16:tpe>256"], gptoss, "sm90")


@pytest.mark.parametrize("ws_us,wins", [(2500.0, True), (3100.0, False)])
def test_tune_serves_a_prefill_ws_row_only_where_it_beats_the_route(ws_us, wins):
    """The path the sweep's DeepSeek prefill rows take into the table: at M 8192 (tpe>256, routed to stock) the
    config's row is the route (3000 µs here); `kernels tune` writes a ws row's knobs, `route: ours` among them,
    only when it is faster, and the written bucket validates and no longer routes to stock."""
    import json
    from importlib import resources
    from types import SimpleNamespace

    from speedrun.eval.kernels import tune
    from speedrun.overlays.mxfp4_moe.config import Act, Fmt, Route

    raw = json.loads(resources.files("speedrun.overlays.mxfp4_moe").joinpath("configs/sm90.json").read_text())
    bucket = "w4a4:tpe>256"
    base = moe.table("sm90")[bucket]
    ws_cfg = moe.variant_cfg(base, moe.SWEEP_VARIANTS["ws_p64_a4"])[0]
    shape = {"impl": "speedrun", "bucket": bucket, "model": "deepseek-r1-mxfp4-tp8", "m": 8192, "gbps": 1.0}
    rows = [{**shape, "variant": "config", "config": base.entry(), "us": 3000.0, "route": Route.STOCK_FP8.value},
            {**shape, "variant": "ws_p64_a4", "config": ws_cfg.entry(), "us": ws_us}]  # fmt: skip
    (choice,) = tune.select(rows, raw)
    assert choice.changed == wins
    if wins:
        assert choice.config["route"] == Route.OURS.value and choice.config["engine"] == "gluon_ws"
        written = tune.apply(raw, [choice], {"command": "test"})[bucket]
        cfg = moe.MoeBucket.checked(written, bucket)
        deepseek = SimpleNamespace(fmt=Fmt.W4A4, act=Act.SILU, b13=None, b2=None)
        assert cfg.route == Route.OURS and not moe.route_served(cfg, deepseek, "sm90")
