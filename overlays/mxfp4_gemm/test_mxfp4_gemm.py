"""MXFP4 GEMM on the CPU: kernels under the Triton interpreter (dequant path, fused activation quant bit-exact,
split-K, edges), configs, AOT compile of every config for gfx950 and sm90, and the SGLang hook with fake layers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

if not torch.cuda.is_available():  # see overlays/mx/test_mx.py: only where no GPU tests share the process
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

import pytest  # noqa: E402

from speedrun.eval.kernels.mxfp4_gemm_bench import DEEPSEEK_NK  # noqa: E402
from speedrun.overlays import interpreter, report  # noqa: E402
from speedrun.overlays.buffers import splitk_counters  # noqa: E402
from speedrun.overlays.mx.format import dequant_mxfp4  # noqa: E402
from speedrun.overlays.mx.quant import qdq_mxfp4, quant_mxfp4  # noqa: E402
from speedrun.overlays.mxfp4_gemm import api  # noqa: E402
from speedrun.overlays.mxfp4_gemm import sglang_hook as hook  # noqa: E402
from speedrun.overlays.mxfp4_gemm.config import AMode, GemmBucket, GemmKnobs, Layout, Route, check_table  # noqa: E402
from speedrun.overlays.mxfp4_gemm.reference import mxfp4_gemm_ref, random_mxfp4_weight  # noqa: E402

interpreter.patch()
SMALL = {"route": "fused", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 1, "GROUP": 1}


def _bucket(**knobs) -> GemmBucket:
    """A validated bucket: a 16 x 64 x 128 tile with `knobs`."""
    return GemmBucket.checked({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, **knobs}, "test bucket")


def _case(m: int, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w, ws = random_mxfp4_weight(n, k, seed=seed, device=DEV)
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).to(torch.bfloat16).to(DEV)
    return a, w, ws


def _gemm(
    a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, *, config: dict | None = None, w_layout: str = "plain", **kw
) -> torch.Tensor:
    """One call through a plan made for this weight, as the hook makes it at load (`config` forces the knobs)."""
    plan = api.make_plan(w.shape[0], w.shape[1] * 2, w_layout, device=a.device, config=config)
    return api.mxfp4_gemm(a, w, ws, plan, **kw)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 accumulation in another order, then one bf16 rounding: within 2 bf16 ulps of the output scale."""
    out, ref = out.float().cpu(), ref.float().cpu()
    tol = 2 * 2.0**-8 * ref.abs().amax().clamp_min(1e-6)
    assert (out - ref).abs().max() <= tol, f"max err {(out - ref).abs().max():.3g} > {tol:.3g}"


# ----------------------------------------------------------------------------- kernels (interpreter)


@pytest.mark.parametrize("route", ["fused", "prequant", "dequant_w"])
@pytest.mark.parametrize("split", [1, 3])
def test_routes_match_reference(route: str, split: int):
    a, w, ws = _case(5, 48, 192)
    out = _gemm(a, w, ws, config={**SMALL, "route": route, "SPLIT_K": split})
    _close(out, mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu()))


@pytest.mark.parametrize("deq", [1, 2, 3])
@pytest.mark.parametrize("mode", ["fused", "prequant", "w4a16", "packed"])
def test_fast_decode_variants_match_reference(deq: int, mode: str):
    """W_DEQ 1 (fast decode, interleaved), 2 (even/odd-K halves, two dots), 3 (int32 words, 8 dots; BLOCK_K 128,
    K = 320 leaves a masked partial tile) in every A mode, with split-K."""
    a, w, ws = _case(5, 48, 320 if deq == 3 else 192, seed=11)
    cfg = {**SMALL, "deq": deq, "route": "prequant" if mode == "prequant" else "fused", "SPLIT_K": 2}
    cfg["BLOCK_K"] = 128 if deq == 3 else cfg["BLOCK_K"]
    if mode == "w4a16":
        out, ref = _gemm(a, w, ws, quant_a=False, config=cfg), mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu(),
                                                                                         quant_a=False)  # fmt: skip
    elif mode == "packed":
        packed, scales = quant_mxfp4(a.cpu())
        out = _gemm(packed.to(DEV), w, ws, a_scale=scales.to(DEV), config=cfg)
        ref = mxfp4_gemm_ref(packed, w.cpu(), ws.cpu(), a_scale=scales)
    else:
        out, ref = _gemm(a, w, ws, config=cfg), mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu())
    _close(out, ref)
    flags = api.deq_flags(GemmBucket.checked(cfg, "t"), cfg["BLOCK_K"], DEV == "cuda", False)
    assert flags == {"W_DEQ": deq, "W_ASM": DEV == "cuda", "W_MUL1": False} and type(flags["W_DEQ"]) is int


def test_fused_quant_is_bit_exact_in_the_gemm():
    # Same tiles and K order: the fused A-load quantizer must produce exactly the values of the reference
    # quantizer, so the outputs match bitwise both with bf16 qdq input and with pre-quantized (packed) input.
    a, w, ws = _case(20, 32, 256, seed=3)
    a[0, :32] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.25, 0.75, 0.25, -7.0] * 4, dtype=a.dtype)  # ties, rounding up
    fused = _gemm(a, w, ws, config=SMALL)
    via_qdq = _gemm(qdq_mxfp4(a.cpu()).to(DEV), w, ws, quant_a=False, config=SMALL)
    packed, scales = quant_mxfp4(a.cpu())
    via_packed = _gemm(packed.to(DEV), w, ws, a_scale=scales.to(DEV), config=SMALL)
    assert torch.equal(fused, via_qdq)
    assert torch.equal(fused, via_packed)


def test_w4a16_and_prequantized_column_major_scales():
    a, w, ws = _case(7, 32, 128, seed=5)
    _close(
        _gemm(a, w, ws, quant_a=False, config=SMALL),
        mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu(), quant_a=False),
    )
    packed, scales = quant_mxfp4(a.cpu())
    col_major = scales.t().contiguous().t()  # aiter's layout: [M, K/32] view of a [K/32, M] buffer
    out = _gemm(packed.to(DEV), w, ws, a_scale=col_major.to(DEV), config=SMALL)
    _close(out, mxfp4_gemm_ref(packed, w.cpu(), ws.cpu(), a_scale=scales))


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("m,n,k", [(1, 16, 64), (17, 40, 96), (33, 24, 160)])
def test_edges_ragged_m_n_and_k(m: int, n: int, k: int, group: int):
    """Clamped edge rows and both grid forms (GROUP 1: (N tiles, splits, M tiles); else grouped tiles)."""
    a, w, ws = _case(m, n, k, seed=m)
    out = _gemm(a, w, ws, config={**SMALL, "SPLIT_K": 2, "GROUP": group})
    assert out.shape == (m, n)
    _close(out, mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu()))


def test_split_k_reduction_rounds_keep_split_order():
    """More splits than partials per reduction round (RED): masked tail loads add exactly, the result is the fixed
    split-order sum whatever split arrives last (same bits on every run) and the counters are left zeroed."""
    a, w, ws = _case(3, 16, 640, seed=29)
    cfg = {**SMALL, "SPLIT_K": 10, "BLOCK_N": 64}  # RED = 64 * 128 // (16 * 64) = 8: rounds of 8 and 2
    assert api.red_unroll(16, 64, 4) == 8
    first = _gemm(a, w, ws, config=cfg)
    _close(first, mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu()))
    assert torch.equal(first, _gemm(a, w, ws, config=cfg))
    assert int(splitk_counters(a.device, 1).abs().sum()) == 0


def test_split_k_counters_are_left_zero_and_reused():
    a, w, ws = _case(4, 32, 256, seed=7)
    first = _gemm(a, w, ws, config={**SMALL, "SPLIT_K": 4})
    assert int(splitk_counters(a.device, 1).abs().sum()) == 0
    assert torch.equal(first, _gemm(a, w, ws, config={**SMALL, "SPLIT_K": 4}))


def test_quantize_and_dequantize_kernels_match_torch():
    a, w, ws = _case(9, 16, 512, seed=9)
    q, _ = api.quantize(a, qdq=True)
    assert torch.equal(q.cpu(), qdq_mxfp4(a.cpu()))
    p, s = api.quantize(a, qdq=False)
    want_p, want_s = quant_mxfp4(a.cpu())
    assert torch.equal(p.cpu(), want_p) and torch.equal(s.cpu(), want_s)
    assert torch.equal(api.dequantize_weight(w, ws).cpu(), dequant_mxfp4(w.cpu(), ws.cpu(), torch.bfloat16))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("arch", ["sm90", "gfx950"])
def test_config_tables_are_complete(arch: str):
    raw = json.loads((Path(api.__file__).parent / "configs" / f"{arch}.json").read_text())
    table = check_table(raw, arch)
    assert list(table.buckets) == [f"m<={b}" for b in (16, 32, 64, 128, 256, 1024)] + ["m>1024"]
    for cfg in table.buckets.values():
        assert cfg.BLOCK_K >= (128 if arch == "gfx950" else 32) and cfg.BLOCK_K & (cfg.BLOCK_K - 1) == 0
    if arch == "gfx950":
        assert raw["_meta"]["tuned"] is False
        assert all(cfg.route != Route.DEQUANT_W for cfg in table.buckets.values())


def test_config_schema_names_the_bad_field():
    good = {"m<=16": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}}
    table = check_table({**good, "2112x7168:m<=16": {"num_stages": 3}, "_layout": "swz128"}, "t")
    assert table.layout == Layout.SWZ128 and check_table(good, "t").layout == Layout.PLAIN
    assert table.config("m<=16", 2112, 7168).num_stages == 3 and table.config("m<=16", 2112, 512).num_stages is None
    bad = [({"16": good["m<=16"]}, "bucket '16'"), ({**good, "m<=16": {**good["m<=16"], "deq": 7}}, "m<=16: deq"),
           ({**good, "m<=16": {**good["m<=16"], "rout": "fused"}}, "m<=16: rout"),
           ({**good, "64x64:m<=32": {}}, "does not have"),
           ({**good, "_layout": "tiled"}, "_layout 'tiled'")]  # fmt: skip
    for table, msg in bad:
        with pytest.raises(ValueError, match=re.escape(msg)):
            check_table(table, "t")
    with pytest.raises(ValueError, match="mxfp4_gemm config: route"):
        api.make_plan(64, 64, device="cpu", config={**good["m<=16"], "route": "fast"})


def test_pick_config_buckets_and_split_k():
    assert [api.bucket_key(m, "sm90") for m in (1, 17, 1024, 5000)] == ["m<=16", "m<=32", "m<=1024", "m>1024"]
    assert api.route_for(api.pick_config(4, 2880, 512, "sm90"), 2880, 512) == "fused"
    assert api.route_for(api.pick_config(1, 36864, 7168, "sm90"), 36864, 7168) == "fused"
    assert api.pick_config(16384, 2112, 7168, "sm90").BLOCK_M >= 128
    cfg = _bucket(SPLIT_K=0, MIN_K_TILES=2)
    assert api.split_k(cfg, tiles=33, k_tiles=28, sms=132) == 7  # ceil(264/33)=8 -> 7 splits of 4 tiles
    assert api.split_k(cfg, tiles=400, k_tiles=28, sms=132) == 1
    assert api.split_k(_bucket(SPLIT_K=5), tiles=1, k_tiles=3, sms=132) == 3


def test_sm_balanced_split_k_and_routes_per_bucket():
    dec = _bucket(SPLIT_K=0, MIN_K_TILES=2, CTAS_PER_SM=3, BLOCK_M=16, BLOCK_N=128, num_warps=4)
    # 1 x 2112 x 7168 (17 tiles x 56 K tiles): 14 splits of 4 K tiles put 2 CTAs on most SMs (the saturating 8 warps)
    # with a 2-round reduction; 7 splits leave 1 CTA per SM twice as long.
    assert api.split_k(dec, tiles=17, k_tiles=56, sms=132) == 14
    assert api.split_k(dec, tiles=264, k_tiles=56, sms=132) == 1  # 2 CTAs per SM already: no partials
    assert api.split_k(dec, tiles=288, k_tiles=56, sms=132) == 4  # 3 on some SMs, 2 on others: split to balance
    assert api.split_k(dec.replace(MIN_K_TILES=4), tiles=17, k_tiles=4, sms=132) == 1  # >= MIN_K_TILES per split
    for tiles, kt in [(33, 56), (112, 16), (576, 56), (7, 3)]:
        s = api.split_k(dec, tiles=tiles, k_tiles=kt, sms=132)
        assert 1 <= s <= min(kt, 32) and kt // s >= 1
    assert api.red_unroll(16, 128, 4) == 4 and api.red_unroll(16, 16, 4) == 8 and api.red_unroll(64, 256, 4) == 1
    # Decode (M <= 64): one launch for every weight, the A-quant fused; prefill buckets pre-quantize A.
    for m in (1, 16, 32, 64):
        for n, k in DEEPSEEK_NK.values():
            assert api.route_for(api.pick_config(m, n, k, "sm90"), n, k) == "fused", (m, n, k)
            assert api.route_for(api.pick_config(m, n, k, "gfx950"), n, k) == "fused", (m, n, k)
    assert api.route_for(api.pick_config(128, 7168, 2048, "sm90"), 7168, 2048) == "prequant"


def test_decode_call_is_one_launch(monkeypatch):
    """The tables' own decode configs: the quantizer kernel never runs and split-K reduces in the GEMM launch."""
    launches = []
    real = api._launch
    monkeypatch.setattr(api, "quantize", lambda *a, **k: pytest.fail("decode must not launch the quantizer"))
    monkeypatch.setattr(api, "_launch", lambda *a, **k: launches.append(a[5].consts["A_MODE"]) or real(*a, **k))
    a, w, ws = _case(3, 256, 1024, seed=23)
    w2, s2, lay = api.relayout_weight(w, ws)
    ref = mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu())
    _close(_gemm(a, w2, s2, w_layout=lay), ref)
    _close(_gemm(a, w, ws), ref)
    assert launches == [AMode.QUANT, AMode.QUANT]  # fused A-quant, once per call


def test_b_regs_knob_reaches_cuda_a_mode_0_kernels_only():
    """b_regs (PERF.md Round 5: prequant wgmmas back to back) sets B_REGS only on CUDA and only in A_MODE 0 kernels;
    off, the constants are exactly the shipped ones; AMD rejects it when the plan is made; the interpreter ignores
    it (the same result bit for bit on the prequant and w4a16 routes, swz128 and plain weights)."""
    cfg = _bucket(route="prequant", b_regs=True)
    assert api.kernel(cfg, AMode.BF16, "sm90", None, Layout.SWZ128_MUL1, cuda=True).consts["B_REGS"] is True
    assert "B_REGS" not in api.kernel(cfg, AMode.QUANT, "sm90", None, Layout.SWZ128_MUL1, cuda=True).consts
    assert "B_REGS" not in api.kernel(cfg, AMode.BF16, "sm90", None, Layout.PLAIN, cuda=False).consts
    off = cfg.replace(b_regs=False)
    assert api.kernel(off, AMode.BF16, "sm90", None, Layout.SWZ128_MUL1, cuda=True).consts == api.kernel(
        _bucket(route="prequant"), AMode.BF16, "sm90", None, Layout.SWZ128_MUL1, cuda=True).consts  # fmt: skip
    with pytest.raises(ValueError, match="b_regs is an sm90 knob"):
        api.make_plan(64, 256, arch="gfx950", config={**SMALL, "b_regs": True})
    a, w, ws = _case(5, 40, 384, seed=41)
    w2, s2, lay = api.relayout_weight(w, ws)
    on = {**SMALL, "route": "prequant", "BLOCK_K": 128, "SPLIT_K": 2, "b_regs": True}
    for weights, layout in (((w2, s2), lay), ((w, ws), "plain")):
        for kw in ({}, {"quant_a": False}):
            got = _gemm(a, *weights, config=on, w_layout=layout, **kw)
            assert torch.equal(got, _gemm(a, *weights, config={**on, "b_regs": False}, w_layout=layout, **kw))


def test_maxnreg_is_a_cuda_launch_option_only():
    cfg = _bucket(num_warps=4, num_stages=4, maxnreg=72, waves_per_eu=2)
    assert api.kernel_options(cfg, "sm90", True) == {"num_warps": 4, "num_stages": 4, "maxnreg": 72}
    assert "maxnreg" not in api.kernel_options(cfg, "sm90", False)
    assert "maxnreg" not in api.kernel_options(cfg, "gfx950", True)


def test_sweep_variants_are_valid_configs():
    from speedrun.eval.kernels.mxfp4_gemm_bench import SWEEP_VARIANTS, VARIANT_CTAS, variant_config

    table = json.loads((Path(api.__file__).parent / "configs" / "sm90.json").read_text())
    known = set(GemmKnobs.model_fields) | {"w_layout"}  # any knob an entry's overrides may set, or the layout
    for name, var in SWEEP_VARIANTS.items():
        assert set(var) <= known, (name, set(var) - known)
    assert set(VARIANT_CTAS) <= set(SWEEP_VARIANTS)
    b16 = api.table("sm90").buckets["m<=16"]
    cfg, layout = variant_config(b16, "config", "m<=16", "swz128")
    assert layout == "swz128" and cfg == b16 and cfg.entry() == table["m<=16"]  # table terms, as the tuner reads
    # swz128 weights: the knobs go into the "swz" overrides
    cfg, layout = variant_config(b16, "bn64", "m<=16", "swz128")
    assert cfg.entry()["swz"] == {**table["m<=16"]["swz"], **SWEEP_VARIANTS["bn64"], "CTAS_PER_SM": 6}
    assert cfg.BLOCK_N == b16.BLOCK_N and layout == "swz128"
    cfg, layout = variant_config(b16, "plain", "m<=16", "swz128")
    assert layout == "plain" and cfg == b16
    assert api.weight_layout("sm90") == Layout.SWZ128_G64 and api.weight_layout("gfx950") == Layout.PLAIN


def test_sweep_rows_feed_kernels_tune():
    """Rows shaped like bench --sweep's go through `speedrun kernels tune`'s selection: the current config is found,
    the winner's change is written into the bucket's "swz" overrides, plain-layout rows do not compete."""
    from speedrun.eval.kernels import tune
    from speedrun.eval.kernels.mxfp4_gemm_bench import variant_config

    table = json.loads((Path(api.__file__).parent / "configs" / "sm90.json").read_text())
    times = {"config": 10.0, "st3": 8.0, "prequant": 12.0, "plain": 5.0}
    rows = []
    for m, n, k in [(1, 36864, 7168), (16, 2112, 7168)]:
        for name, us in times.items():
            cfg, layout = variant_config(api.pick_config(m, n, k, "sm90"), name, "m<=16", "swz128")
            impl = "speedrun" if layout == "swz128" else "speedrun_plain"
            rows.append({"impl": impl, "m": m, "n": n, "k": k, "us": us, "variant": name, "bucket": "m<=16",
                         "nk": f"{n}x{k}", "w_layout": layout, "config": cfg.entry(),
                         "current": name == "config"})  # fmt: skip
    (choice,) = tune.select(rows, table)
    assert (choice.bucket, choice.current, choice.winner, choice.candidates) == ("m<=16", "config", "st3", 3)
    out = tune.apply(table, [choice], {"gpu": "test"})
    assert out["m<=16"]["swz"]["num_stages"] == 3 and out["m<=16"]["num_stages"] == 6
    check_table(out, "tuned")


@pytest.mark.parametrize("m,n,k,route", [(3, 24, 256, "fused"), (5, 40, 384, "prequant"), (2, 16, 128, "dequant_w")])
def test_swz128_weights_match_plain(m: int, n: int, k: int, route: str):
    """Weights re-laid out as the hook does (mx.layout swz128) give the reference result on every route."""
    a, w, ws = _case(m, n, k, seed=k)
    w2, s2, layout = api.relayout_weight(w, ws)
    assert layout == "swz128_mul1" and w2.shape == w.shape  # scales 2**-9..2**-3 <= 2: the one-multiply decode
    assert torch.equal(api.plain_weight(w2, s2, layout)[0], w)
    cfg = {**SMALL, "route": route, "BLOCK_K": 128, "SPLIT_K": 2}
    ref = mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu())
    _close(_gemm(a, w2, s2, config=cfg, w_layout=layout), ref)
    if route == "fused":
        packed, scales = quant_mxfp4(a.cpu())
        pre = _gemm(packed.to(DEV), w2, s2, a_scale=scales.to(DEV), config=cfg, w_layout=layout)
        _close(pre, mxfp4_gemm_ref(packed, w.cpu(), ws.cpu(), a_scale=scales))
        _close(_gemm(a, w2, s2, quant_a=False, config=cfg, w_layout="swz128"),
               mxfp4_gemm_ref(a.cpu(), w.cpu(), ws.cpu(), quant_a=False))  # fmt: skip
    if route == "dequant_w":
        assert torch.equal(
            api.dequantize_weight(w2, s2, layout).cpu(), dequant_mxfp4(w.cpu(), ws.cpu(), torch.bfloat16)
        )


@pytest.mark.parametrize("route", ["fused", "prequant", "dequant_w"])
def test_row_grouped_weights_are_bit_identical_to_row_major(route: str):
    """swz128 with rows in groups of 64 (mx.layout group_rows): the same values at other addresses, so every route
    gives the row-major layout's output bit for bit (split-K, a partial last N tile clamped onto real rows), the
    dequantizer the same bf16 weight, plain_weight the plain codes; rows that do not fill the groups stay
    row-major; a tile that splits a group is refused at plan time."""
    a, w, ws = _case(5, 192, 256, seed=71)
    rm_w, rm_s, rm = api.relayout_weight(w, ws)
    g_w, g_s, grouped = api.relayout_weight(w, ws, "swz128_g64")
    assert (rm, grouped) == ("swz128_mul1", "swz128_g64_mul1") and not torch.equal(g_w, rm_w)
    assert torch.equal(api.plain_weight(g_w, g_s, grouped)[0], w)
    assert torch.equal(api.plain_weight(g_w, g_s, grouped)[1], ws)
    cfg = {**SMALL, "route": route, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 2}
    assert torch.equal(_gemm(a, g_w, g_s, config=cfg, w_layout=grouped), _gemm(a, rm_w, rm_s, config=cfg, w_layout=rm))
    assert torch.equal(api.dequantize_weight(g_w, g_s, grouped), api.dequantize_weight(rm_w, rm_s, rm))
    assert api.relayout_weight(*random_mxfp4_weight(96, 128, seed=3), "swz128_g64")[2] == "swz128_mul1"
    with pytest.raises(ValueError, match="BLOCK_N 32 is not a multiple of the swz128_g64_mul1 row group"):
        _gemm(a, g_w, g_s, config={**cfg, "BLOCK_N": 32}, w_layout=grouped)


def test_relayout_picks_the_general_decode_for_big_scales():
    w, ws = random_mxfp4_weight(16, 128, seed=3, scale_lo=120, scale_hi=131)
    assert api.relayout_weight(w, ws)[2] == "swz128"
    with pytest.raises(NotImplementedError):
        api.relayout_weight(*random_mxfp4_weight(16, 96, seed=3))


# ----------------------------------------------------------------------------- AOT compile


@pytest.mark.parametrize("arch", ["sm90", "gfx950"])
def test_compile_every_config(arch: str):
    # In a child process: kernels decorated under TRITON_INTERPRET cannot be compiled.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_gemm_compile", arch]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["specs"][arch] >= 10 and result["failures"][arch] == []


def test_decode_loop_sass_streams_without_serialized_wgmma():
    """sm90 SASS of the served decode configs (swz128, fused A-quant): the wgmmas of a K step issue back to back
    (one wait per step; ptxas serializes register-A wgmma after each one when the dot is pipelined async), the first
    weight load comes early (no integer divisions in the prologue), no spills, >= 2 CTAs per SM."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_gemm_sass", "--json", "16", "m<=64"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for bucket, s in json.loads(proc.stdout).items():
        assert s["mma"] >= 8 and s["mma_waits"] == 1, (bucket, s["mma"], s["mma_waits"])
        assert s["first_load"] < 150 and s["local"] == 0 and s["ctas_per_sm"] >= 2, (bucket, s)


def test_m32_register_cap_fits_a_third_cta_without_spilling():
    """The sweep's m32_r80 row (PERF.md round 7): m<=32's fused kernel (swz128, as served) holds 82 registers, so
    2 CTAs of 8 warps per SM; capped at 80 (maxnreg, CUDA only) it keeps its wgmmas back to back with no spill
    and fits 3."""
    from speedrun.eval.kernels.mxfp4_gemm_bench import SWEEP_VARIANTS, VARIANT_CTAS

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_gemm_sass", "--json", "m<=32"]
    runs = [subprocess.run([*cmd, *knobs], env=env, capture_output=True, text=True, timeout=600)
            for knobs in ([], ["--knobs", "maxnreg=80"])]  # fmt: skip
    assert all(p.returncode == 0 for p in runs), [p.stderr[-2000:] for p in runs]
    (old,), (new,) = (json.loads(p.stdout).values() for p in runs)
    assert old["ctas_per_sm"] == 2 and old["regs"] > 80, old
    assert new["regs"] <= 80 and new["local"] == 0 and new["mma_waits"] == 1 and new["ctas_per_sm"] == 3, new
    assert SWEEP_VARIANTS["m32_r80"] == {"maxnreg": 80} and VARIANT_CTAS["m32_r80"] == {"m<=32": 3}


def test_b_regs_prequant_sass_waits_once_per_k_step():
    """The AOT evidence of PERF.md's Round 5 b_regs rows (prequant A_MODE 0, swz128, as served) at m<=128 and
    m<=256 (m<=1024 compiles to the same kernel): the shipped kernels wait after every wgmma (Triton 3.6's
    "properly async" dot: if this part fails, Triton stopped serializing and b_regs may be moot); with b_regs the
    same wgmmas wait once per K step (one accumulator), no spills, no fewer CTAs per SM, fewer loop instructions."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_gemm_sass", "--json", "--route", "prequant"]
    runs = [subprocess.run([*cmd, *knobs, "m<=128", "m<=256"], env=env, capture_output=True, text=True, timeout=600)
            for knobs in ([], ["--knobs", "b_regs=true"])]  # fmt: skip
    assert all(p.returncode == 0 for p in runs), [p.stderr[-2000:] for p in runs]
    old, new = (json.loads(p.stdout) for p in runs)
    for bucket, s in new.items():
        o = old[bucket]
        assert o["mma"] >= 8 and o["mma_waits"] == o["mma"], (bucket, o)
        assert s["mma"] == o["mma"] and s["mma_waits"] == 1 and s["local"] == 0, (bucket, s)
        assert s["ctas_per_sm"] >= o["ctas_per_sm"] and s["loop"] < o["loop"], (bucket, s, o)


# ----------------------------------------------------------------------------- SGLang hook (fake layers)


def _layer(n: int = 32, k: int = 128) -> SimpleNamespace:
    w, ws = random_mxfp4_weight(n, k, seed=11, device=DEV)
    return SimpleNamespace(weight=w, weight_scale=ws)


def _never(*args, **kwargs):
    raise AssertionError("stock apply_weights must not run")


@pytest.fixture
def small_configs(monkeypatch):
    """Layers' plans (built by the hook at their first call here) run SMALL in every bucket."""
    real = api.make_plan
    monkeypatch.setattr(api, "make_plan", lambda n, k, layout="plain", **kw: real(n, k, layout, **kw, config=SMALL))


def test_hook_plain_3d_and_prequantized_inputs(small_configs):
    layer, scheme = _layer(), SimpleNamespace(out_dtype=torch.bfloat16)
    x = torch.randn(2, 3, 128).to(torch.bfloat16).to(DEV)
    y = hook.apply_weights(_never, scheme, layer, x)
    assert y.shape == (2, 3, 32)
    _close(y.reshape(6, 32), mxfp4_gemm_ref(x.reshape(6, 128).cpu(), layer.weight.cpu(), layer.weight_scale.cpu()))
    packed, scales = quant_mxfp4(x.reshape(6, 128).cpu())
    y2 = hook.apply_weights(_never, scheme, layer, (packed.to(DEV), scales.to(DEV)))
    assert torch.equal(y2, y.reshape(6, 32))


def test_hook_output_slot_form_and_bias(small_configs):
    layer, scheme = _layer(), SimpleNamespace(out_dtype=torch.bfloat16)
    x = torch.randn(4, 128).to(torch.bfloat16).to(DEV)
    fp32_slot = torch.zeros(4, 32, device=DEV)  # SGLang's zeroed bump buffer is fp32: not used as output
    y = hook.apply_weights(_never, scheme, layer, (x, None, fp32_slot))
    assert y.dtype == torch.bfloat16 and fp32_slot.abs().sum() == 0
    bf16_slot = torch.empty(4, 32, dtype=torch.bfloat16, device=DEV)
    y2 = hook.apply_weights(_never, scheme, layer, (x, None, bf16_slot))
    assert y2.data_ptr() == bf16_slot.data_ptr() and torch.equal(y2, y)
    bias = torch.ones(32, dtype=torch.bfloat16, device=DEV)
    assert torch.equal(hook.apply_weights(_never, scheme, layer, x, bias=bias), y + bias)


def test_hook_falls_back_and_reports(small_configs):
    layer, scheme = _layer(), SimpleNamespace(out_dtype=torch.bfloat16)
    calls = []
    stock = lambda *args, **kwargs: calls.append(args) or "stock"
    x = torch.randn(4, 128).to(torch.bfloat16).to(DEV)
    assert hook.apply_weights(stock, scheme, layer, (x, None, 1, 2, torch.bfloat16)) == "stock"
    bf16_layer = SimpleNamespace(weight=torch.zeros(32, 128, dtype=torch.bfloat16), weight_scale=None)
    assert hook.apply_weights(stock, scheme, bf16_layer, x) == "stock"
    assert len(calls) == 2
    reasons = report.snapshot()["fallbacks"]
    assert any("split-cat" in r for r in json.dumps(reasons).split('"'))


def test_hook_reference_backend(monkeypatch):
    monkeypatch.setenv("SPEEDRUN_MXFP4_GEMM_BACKEND", "reference")
    layer, scheme = _layer(), SimpleNamespace(out_dtype=torch.bfloat16)
    x = torch.randn(3, 128).to(torch.bfloat16).to(DEV)
    want = mxfp4_gemm_ref(x, layer.weight, layer.weight_scale)
    assert torch.equal(hook.apply_weights(_never, scheme, layer, x), want)


def test_aiter_backend_is_a_clear_error_without_rocm(monkeypatch, small_configs):
    if getattr(torch.version, "hip", None):
        pytest.skip("ROCm build")
    monkeypatch.setenv("SPEEDRUN_MXFP4_GEMM_BACKEND", "aiter")
    layer, scheme = _layer(), SimpleNamespace(out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="needs ROCm"):
        hook.apply_weights(_never, scheme, layer, torch.randn(2, 128).to(torch.bfloat16).to(DEV))


def test_mla_absorbed_weights_rebuilt_in_bf16():
    heads, nope, vdim, rank = 2, 128, 128, 64
    w, ws = random_mxfp4_weight(heads * (nope + vdim), rank, seed=13)
    attn = torch.nn.Module()
    attn.kv_b_proj = SimpleNamespace(weight=w, weight_scale=ws)
    attn.qk_nope_head_dim, attn.v_head_dim = nope, vdim
    attn.w_kc, attn.w_vc, attn.w_scale = w[:, :64].reshape(heads, nope, -1), None, ws  # what stock leaves
    model = torch.nn.Module()
    model.attn = attn
    assert hook.fix_mla_absorbed_weights(model) == 1
    full = dequant_mxfp4(w, ws, torch.bfloat16).unflatten(0, (heads, nope + vdim))
    assert attn.w_kc.dtype == torch.bfloat16 and attn.w_scale is None
    assert torch.equal(attn.w_kc, full[:, :nope]) and attn.w_kc.shape == (heads, nope, rank)
    assert torch.equal(attn.w_vc, full[:, nope:].transpose(1, 2)) and attn.w_vc.shape == (heads, rank, vdim)
    assert hook.fix_mla_absorbed_weights(model) == 0  # idempotent


def test_hook_relayout_in_place_and_mla_from_swizzled():
    import torch.nn as nn

    heads, nope, vdim, rank = 2, 128, 128, 128
    w, ws = random_mxfp4_weight(heads * (nope + vdim), rank, seed=17)
    kv = nn.Module()
    kv.weight, kv.weight_scale = (
        nn.Parameter(w.clone(), requires_grad=False),
        nn.Parameter(ws.clone(), requires_grad=False),
    )
    assert hook.relayout(kv) == "swz128_mul1" and hook.relayout(kv) == "swz128_mul1"  # idempotent
    assert not torch.equal(kv.weight, w) and torch.equal(api.plain_weight(kv.weight, kv.weight_scale, "swz128")[0], w)
    attn = torch.nn.Module()
    attn.kv_b_proj, attn.qk_nope_head_dim, attn.v_head_dim = kv, nope, vdim
    attn.w_kc, attn.w_vc, attn.w_scale = kv.weight[:, :64].reshape(heads, nope, -1), None, ws
    model = torch.nn.Module()
    model.attn = attn
    assert hook.fix_mla_absorbed_weights(model) == 1
    full = dequant_mxfp4(w, ws, torch.bfloat16).unflatten(0, (heads, nope + vdim))
    assert torch.equal(attn.w_kc, full[:, :nope]) and torch.equal(attn.w_vc, full[:, nope:].transpose(1, 2))


def test_hook_swizzled_layer_needs_triton(monkeypatch):
    layer, scheme = _layer(), SimpleNamespace(out_dtype=torch.bfloat16)
    layer.speedrun_w_layout = "swz128"
    monkeypatch.setenv("SPEEDRUN_MXFP4_GEMM_BACKEND", "reference")
    x = torch.randn(2, 128).to(torch.bfloat16).to(DEV)
    assert hook.apply_weights(lambda *a, **k: "stock", scheme, layer, x) == "stock"


def test_bench_helpers(tmp_path):
    from speedrun.eval.kernels import mxfp4_gemm_bench as bench

    w, ws = random_mxfp4_weight(8, 64, seed=1)
    assert torch.equal(bench.torch_dequant(w, ws, bench._lut(w.device)), dequant_mxfp4(w, ws, torch.bfloat16))
    rows = [bench._row(i, "cpu", 16, 2112, 7168, us) for i, us in (("speedrun", 4.0), ("dequant_cublas", 40.0),
                                                                  ("bf16_cublas", 12.0))]  # fmt: skip
    assert rows[0]["gbps"] == round(bench._bytes(16, 2112, 7168, "mxfp4") / 4.0 / 1e3, 1)
    bench.plot(rows, tmp_path / "p.png")
    bench.summary(rows)
    assert (tmp_path / "p.png").stat().st_size > 1000 and len(bench.shapes()) >= 30


def test_a_per_shape_entry_wins_over_the_buckets_swz_overrides():
    """`<N>x<K>:m<=N` is the most specific entry: on swz128 weights (where the bucket's "swz" knobs are applied
    after it) its knobs still run; other shapes and knobs it does not name keep the bucket's."""
    from speedrun.overlays.mxfp4_gemm.config import check_table

    table = check_table({"_layout": "swz128", "m<=16": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128,
                         "swz": {"BLOCK_N": 128, "CTAS_PER_SM": 3, "num_stages": 4}},
                         "2112x7168:m<=16": {"BLOCK_N": 64, "CTAS_PER_SM": 6}}, "t")  # fmt: skip
    mine, other = table.config("m<=16", 2112, 7168), table.config("m<=16", 4096, 7168)
    run = mine.with_overrides(mine.swz)  # what api.resolve runs for swz128 weights
    assert (run.BLOCK_N, run.CTAS_PER_SM, run.num_stages) == (64, 6, 4)
    run = other.with_overrides(other.swz)
    assert (run.BLOCK_N, run.CTAS_PER_SM) == (128, 3)


GEMM_PDL_PTX = """
import json, re
from speedrun.eval.kernels.aot import compile_spec
from speedrun.eval.kernels.mxfp4_gemm_compile import gemm_spec
from speedrun.overlays.mxfp4_gemm import api
from speedrun.overlays.mxfp4_gemm.config import AMode, Layout
out = {}
for key, a_mode in (("m<=16", AMode.QUANT), ("m<=128", AMode.BF16)):
    cfg = api.table("sm90").buckets[key]
    cfg = cfg.with_overrides(cfg.swz).replace(pdl=True) if cfg.swz is not None else cfg.replace(pdl=True)
    for layout in (Layout.SWZ128, Layout.SWZ128_G64):
        r = compile_spec(gemm_spec(f"{key}/{layout}", cfg, a_mode, "sm90", 4, layout), "sm90")
        ops = re.findall(r"griddepcontrol\\.\\w+|prefetch\\.global\\.L2|cp\\.async\\.c[ag]|ld\\.global", r.asm)
        out[r.name] = {"ok": r.ok, "error": r.error, "ops": ops}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_pdl_prefetches_weights_then_waits_before_reading_a():
    """GemmBucket.pdl on sm90 (child process, as the AOT report): the kernel's first memory operations are L2
    prefetches of its weight slice, then griddepcontrol.wait and launch_dependents, and only then any load or
    cp.async (A comes from the kernel before: overlays/pdl.py, rule 2); the fused and the A_MODE 0 (prequant) kernel,
    row-major and 64-row-grouped swz128. Off the GPU the knob resolves to nothing."""
    cpu = api.kernel(api.table("sm90").buckets["m<=16"].replace(pdl=True), AMode.QUANT, "sm90", None,
                     Layout.SWZ128, cuda=False)  # fmt: skip
    assert "PDL" not in cpu.consts and not cpu.pdl
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", GEMM_PDL_PTX], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, r in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        assert r["ok"], (name, r["error"])
        ops = r["ops"]
        wait = ops.index("griddepcontrol.wait")
        assert set(ops[:wait]) == {"prefetch.global.L2"}, (name, ops[: wait + 1])
        assert ops[wait + 1] == "griddepcontrol.launch_dependents", (name, ops[wait : wait + 3])


# ----------------------------------------------------------------------------- engine gluon_ws (plan; sm90 AOT)


def _ws(**knobs) -> GemmBucket:
    return GemmBucket.checked({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "engine": "gluon_ws", **knobs}, "t")


@pytest.mark.parametrize("knobs,field", [({"BLOCK_K": 256}, "BLOCK_K"), ({"BLOCK_N": 256}, "BLOCK_N"),
                                         ({"num_stages": 6}, "shared memory"), ({"route": "prequant"}, "fused"),
                                         ({"pdl": True}, "pdl"), ({"num_warps": 8}, "num_warps"),
                                         ({"num_stages": 1}, "num_stages")])  # fmt: skip
def test_ws_engine_knobs_are_refused_by_the_plan(knobs: dict, field: str):
    """Every gluon_ws knob the kernel cannot take is a one-line ValueError naming it, when the plan is made (also
    where the Triton kernel would run instead: the table is checked on every machine)."""
    with pytest.raises(ValueError, match=field):
        api.make_plan(2112, 7168, "swz128_g64_mul1", device="cpu", config=_ws(**knobs))


def test_ws_engine_runs_only_where_it_applies():
    """sm90 GPU, swz128 weights, the fused w4a4 route: the Gluon kernel with the layout's row group and decode; the
    bucket's w4a16 and pre-quantized kernels, plain weights, the interpreter and gfx950 run the Triton kernel."""
    cfg = _ws(num_stages=5)
    ws = api.kernel(cfg, AMode.QUANT, "sm90", 7168, Layout.SWZ128_G64_MUL1, cuda=True)
    assert ws.engine == "gluon_ws" and ws.tile == (64, 128, 128) and ws.opts == {"num_warps": 4}
    assert ws.consts == {"BLOCK_M": 64, "BLOCK_N": 128, "ROWG": 64, "MUL1": True, "STAGES": 5, "RED": 1}
    assert api.kernel(cfg, AMode.QUANT, "sm90", 7168, Layout.SWZ128, cuda=True).consts["ROWG"] == 1
    others = [(AMode.BF16, "sm90", Layout.SWZ128_G64, True), (AMode.MXFP4, "sm90", Layout.SWZ128_G64, True),
              (AMode.QUANT, "sm90", Layout.PLAIN, True), (AMode.QUANT, "sm90", Layout.SWZ128_G64, False),
              (AMode.QUANT, "gfx950", Layout.PLAIN, True)]  # fmt: skip
    for mode, arch, layout, cuda in others:
        assert api.kernel(cfg, mode, arch, 7168, layout, cuda=cuda).engine == "triton", (mode, arch, layout, cuda)
    plan = api.make_plan(2112, 7168, "swz128_g64_mul1", device="cpu", config=cfg)
    assert plan.launch(16).quant.engine == "triton" and "Gluon" not in plan.route_line()
    run = api.resolve(cfg, 2112, 7168, Layout.SWZ128_G64_MUL1, "sm90", cuda=True)
    assert run.quant.engine == "gluon_ws" and run.quant16.engine == "triton"  # fp16 A: the Triton kernel


@pytest.mark.parametrize("split", [1, 4])
def test_ws_engine_launch_binds_every_kernel_argument_once(monkeypatch, split: int):
    """The Gluon launch in api._launch (the interpreter cannot run Gluon: its launcher is swapped for one that
    records the call) gives every parameter of the real kernel exactly one value, SPLIT as the split it sized the
    partials for, and no launch option but num_warps."""
    from speedrun.overlays.mxfp4_gemm import gluon_sm90_ws

    real, launches = gluon_sm90_ws.mxfp4_gemm_ws_kernel, interpreter.LaunchRecorder()
    monkeypatch.setattr(gluon_sm90_ws, "mxfp4_gemm_ws_kernel", launches)
    run = api.resolve(_ws(SPLIT_K=split), 2112, 7168, Layout.SWZ128_G64_MUL1, "sm90", cuda=True)
    assert run.quant.engine == "gluon_ws"
    plan = SimpleNamespace(n=2112, k=7168, sms=132)
    a, out = torch.zeros(16, 7168, dtype=torch.bfloat16), torch.empty(16, 2112, dtype=torch.bfloat16)
    w, ws = torch.zeros(2112, 3584 // 4, dtype=torch.int32), torch.zeros(2112, 7168 // 32, dtype=torch.uint8)
    api._launch(a, None, w, ws, out, run.quant, plan)
    ((grid, args, kw),) = launches.calls
    assert interpreter.options_of(real, args, kw) == {"num_warps"} and kw["SPLIT"] == (split > 1) and grid[1] == split


def test_ws_engine_on_cpu_matches_reference():
    """Where gluon_ws does not apply (here: the interpreter) the bucket's Triton kernel serves the call."""
    a, w, ws = _case(16, 256, 512, seed=3)
    w2, s2, lay = api.relayout_weight(w, ws, "swz128_g64")
    out = _gemm(a, w2, s2, w_layout=lay, config=_ws(BLOCK_M=16, BLOCK_N=64, num_stages=6))
    _close(out, mxfp4_gemm_ref(a, w, ws))


GEMM_WS_PTX = r"""
import json, re
from speedrun.eval.kernels.aot import compile_spec
from speedrun.eval.kernels.mxfp4_gemm_compile import ws_specs
from speedrun.overlays.mxfp4_gemm import api
out = {}
for spec in ws_specs(api.table("sm90"), "sm90"):
    r = compile_spec(spec, "sm90")
    c = spec.constexprs
    parts = re.split(r"setmaxnreg\.inc", r.asm)
    out[spec.name + str(c["BLOCK_M"])] = {
        "ok": r.ok, "error": r.error, "shared": r.shared,
        "need": api.ws_shared_bytes(c["BLOCK_M"], c["BLOCK_N"], c["STAGES"]),
        "stmatrix": [p.count("stmatrix") for p in parts], "bar": [p.count("bar.sync") for p in parts]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_ws_kernels_compile_to_the_planned_shared_memory_and_fragment_stores():
    """Each gluon_ws sweep row on sm90 (child process): compiles; its shared memory is api.ws_shared_bytes plus at
    most 1 KiB (what the plan's check assumes); the W decoder stores its bf16 tile with stmatrix (the decoded words
    land in the MMA fragment order: no layout conversion), with at most 4 barriers a tile (one per hand-off and the
    store: none per row slice)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", GEMM_WS_PTX], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) >= 8
    for name, r in rows.items():
        assert r["ok"], (name, r["error"])
        assert r["need"] <= r["shared"] <= r["need"] + 1024, (name, r["shared"], r["need"])
        dec = [i for i, n in enumerate(r["stmatrix"]) if n]
        assert len(dec) == 1 and r["bar"][dec[0]] <= 4, (name, r["stmatrix"], r["bar"])
