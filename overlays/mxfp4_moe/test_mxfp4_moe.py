"""CPU tests: the MoE kernels under the Triton interpreter vs the torch reference (small shapes, both
formats, routing / padding / EP-filtered slots), the sort, the load-time re-layouts, configs, AOT compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import torch

# The interpreter only where there is no GPU (TRITON_INTERPRET is read when kernels are decorated, so setting it
# in a process that also runs GPU tests would interpret their kernels); on a GPU host these tests skip.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from speedrun.overlays import buffers, interpreter
from speedrun.overlays.arch import load_configs
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mx.quant import quant_mxfp4
from speedrun.overlays.mxfp4_moe import api as moe_mod
from speedrun.overlays.mxfp4_moe import sort
from speedrun.overlays.mxfp4_moe.api import Act, MoeWeights, fused_moe_mxfp4, make_plan, quant_rows
from speedrun.overlays.mxfp4_moe.config import CUDA_LAYOUT, MoeBucket
from speedrun.overlays.mxfp4_moe.reference import moe_reference, qdq_fp8_groups
from speedrun.overlays.mxfp4_moe.sglang_hook import _deinterleave, _triton_kernels_to_standard


def moe(x, w, ids, tw, routed_scaling_factor=1.0, *, cfg):
    """Our MoE with one config for every M (sm90 flags), planned for these weights."""
    return fused_moe_mxfp4(x, w, ids, tw, make_plan(w, arch="sm90", config=cfg), routed_scaling_factor)


TINY = dict(BLOCK_M=16, BLOCK_N1=32, BLOCK_K1=64, warps1=4, stages1=1, BLOCK_N2=32, BLOCK_K2=64, warps2=4, stages2=1)

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests (GPU hosts run test_mxfp4_moe_gpu.py)"
)


@pytest.fixture(autouse=True, scope="module")
def _interp():
    interpreter.patch()


def _routing(m: int, e: int, topk: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:topk] for _ in range(m)]).int()
    return ids, torch.rand(m, topk, generator=g)


def _weights(e: int, n: int, h: int, seed: int, **kw) -> MoeWeights:
    g = torch.Generator().manual_seed(seed)
    u8 = lambda *s, lo=0, hi=256: torch.randint(lo, hi, s, generator=g, dtype=torch.uint8)
    return MoeWeights(u8(e, 2 * n, h // 2), u8(e, 2 * n, h // 32, lo=121, hi=126), u8(e, h, n // 2),
                      u8(e, h, n // 32, lo=121, hi=126), **kw)  # fmt: skip


def _model_experts(e: int, n: int, h: int, a4: bool, seed: int) -> tuple[MoeWeights, torch.Generator, dict]:
    """Experts as a model has them: DeepSeek's (w4a4, SiLU) or GPT-OSS's (w4a16, SwiGLU-OAI with biases); the
    generator for the test's next tensors and the weights' keyword arguments."""
    kw = dict(a4=True, act=Act.SILU) if a4 else dict(act=Act.SWIGLU_OAI)
    w = _weights(e, n, h, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    if not a4:
        w.b13, w.b2 = torch.randn(e, 2 * n, generator=g), torch.randn(e, h, generator=g)
    return w, g, kw


def _check(out: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert err < rel, f"relative L2 error {err:.4f} >= {rel}"


def _ref(x, w: MoeWeights, ids, tw, **kw):
    return moe_reference(x, w.w13, w.w13_scale, w.w2, w.w2_scale, ids, tw, b13=w.b13, b2=w.b2, a4=w.a4, act=w.act,
                         alpha=w.alpha, limit=w.limit, **kw)  # fmt: skip


@pytest.mark.parametrize("m,e,topk,bm", [(1, 128, 4, 16), (37, 257, 9, 16), (300, 32, 8, 32), (5, 6, 6, 16)])
@pytest.mark.parametrize("small", [True, False])
def test_sort_groups_slots_by_expert(m, e, topk, bm, small, monkeypatch):
    monkeypatch.setattr(sort, "SMALL_MAX", 1 << 30 if small else 0)
    ids, _ = _routing(m, e, topk, seed=m)
    ids[(ids % 5) == 0] = -1  # EP-filtered slots are dropped
    s = sort.sort_tokens(ids, e, bm)
    flat, npad = ids.reshape(-1), int(s.num_padded)
    body = s.sorted_ids[:npad]
    real = body[body < flat.numel()]
    assert sorted(real.tolist()) == [i for i in range(flat.numel()) if flat[i] >= 0]
    assert npad % bm == 0 and npad <= s.max_blocks * bm
    for b in range(npad // bm):
        blk = body[b * bm : (b + 1) * bm]
        blk = blk[blk < flat.numel()].long()
        assert blk.numel() > 0 and (flat[blk] == s.expert_ids[b]).all()
    assert (s.expert_ids[npad // bm :] == -1).all() and (s.sorted_ids[npad:] == flat.numel()).all()


@pytest.mark.parametrize("small", [True, False])
def test_sort_skewed_routing(small, monkeypatch):
    """Every slot on one expert (its blocks are written by one lane, one per loop step) and an expert left empty
    between used ones: the block -> expert table and the sentinels are still whole."""
    monkeypatch.setattr(sort, "SMALL_MAX", 1 << 30 if small else 0)
    ids = torch.full((70, 3), 5, dtype=torch.int32)
    ids[:3, 0] = 0  # expert 0: 3 slots; experts 1-4 empty; expert 5 the rest
    s = sort.sort_tokens(ids, 9, 16)
    npad = int(s.num_padded)
    assert npad == 16 + 208  # 3 -> one block, 207 -> 13 blocks
    assert s.expert_ids[:14].tolist() == [0] + [5] * 13 and (s.expert_ids[14:] == -1).all()
    flat = ids.reshape(-1)
    for b in range(14):
        blk = s.sorted_ids[b * 16 : (b + 1) * 16]
        blk = blk[blk < flat.numel()].long()
        assert (flat[blk] == s.expert_ids[b]).all()
    assert (s.sorted_ids[npad:] == flat.numel()).all()


def test_quant_rows_bit_exact_with_reference_quantizer():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 512, generator=g) * torch.logspace(-3, 3, 512)).bfloat16()
    x[0, :32] = 0
    q, s = quant_rows(x)
    rq, rs = quant_mxfp4(x)
    assert torch.equal(q, rq) and torch.equal(s, rs)


@pytest.mark.parametrize("m,topk", [(1, 4), (19, 4)])
def test_w4a16_swiglu_bias_matches_reference(m, topk):
    e, n, h = 6, 64, 96
    w = _weights(e, n, h, seed=2, act=Act.SWIGLU_OAI)
    g = torch.Generator().manual_seed(3)
    w.b13, w.b2 = torch.randn(e, 2 * n, generator=g), torch.randn(e, h, generator=g)
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=4)
    _check(moe(x, w, ids, tw, cfg=TINY), _ref(x, w, ids, tw), 1e-2)


@pytest.mark.parametrize("swap,deq", [(True, 2), (False, 2), (True, 0)])
@pytest.mark.parametrize("a4", [False, True])
def test_sm90_swap_and_fast_decode_variants(swap, deq, a4):
    """SWAP (acc^T = W @ A^T) and W_DEQ 2 (even/odd-K halves; exact Triton under the interpreter)."""
    e, n, h, topk, m = 5, 64, 128, 3, 7
    w = _weights(e, n, h, seed=9, a4=a4, act=Act.SILU if a4 else Act.SWIGLU_OAI)
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(10)).bfloat16()
    ids, tw = _routing(m, e, topk, seed=11)
    out = moe(x, w, ids, tw, cfg={**TINY, "swap": swap, "deq": deq})
    _check(out, _ref(x, w, ids, tw), 3e-2 if a4 else 1e-2)


@pytest.mark.parametrize("a4", [False, True])
def test_gemm1_split_k_matches_reference_and_resets_counters(a4):
    """GEMM1 split-K (3 splits over 4 K tiles, one split empty-ranged): same result, counters left zeroed."""
    e, n, h, topk, m = 4, 64, 256, 2, 3
    w = _weights(e, n, h, seed=12, a4=a4, act=Act.SILU if a4 else Act.SWIGLU_OAI)
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(13)).bfloat16()
    ids, tw = _routing(m, e, topk, seed=14)
    cfg = MoeBucket.checked({**TINY, "swap": True, "deq": 2, "split1": 3}, "tiny")
    assert moe_mod.gemm1_split(cfg, 8, 4, torch.device("cpu")) == 3
    assert moe_mod.gemm1_split(cfg.replace(split1=0), 72, 28, torch.device("cpu")) == 1  # 4 "SMs": one wave
    out = moe(x, w, ids, tw, cfg=cfg)
    _check(out, _ref(x, w, ids, tw), 3e-2 if a4 else 1e-2)
    assert all(int(b.abs().sum()) == 0 for b in buffers._counters.values())


def test_w4a16_hidden_padding_is_ignored():
    """aiter layouts pad hidden: w13 K and w2 rows beyond x's width must not change the result."""
    e, n, h, pad = 4, 32, 64, 32
    w = _weights(e, n, h + pad, seed=5, act=Act.SWIGLU_OAI)
    w.w13[:, :, h // 2 :] = 0
    x = torch.randn(3, h).bfloat16()
    ids, tw = _routing(3, e, 2, seed=6)
    ref = _ref(torch.nn.functional.pad(x, (0, pad)), w, ids, tw)[:, :h]
    _check(moe(x, w, ids, tw, cfg=TINY), ref, 1e-2)


@pytest.mark.parametrize("m", [1, 21])
def test_w4a4_silu_matches_reference(m):
    e, n, h, topk = 9, 64, 128, 5
    w = _weights(e, n, h, seed=7, a4=True, act=Act.SILU)
    x = torch.randn(m, h).bfloat16()
    ids, tw = _routing(m, e, topk, seed=8)
    ids[:, -1] = -1  # one EP-filtered slot per token
    out = moe(x, w, ids, tw, routed_scaling_factor=2.5, cfg=TINY)
    _check(out, _ref(x, w, ids, tw, routed_scaling_factor=2.5), 3e-2)


def test_deinterleave_matches_gptoss_swiglu_layout():
    """Rows (g0, u0, g1, u1, ...) -> [gate ; up]; SGLang reads gate = x[..., ::2], up = x[..., 1::2]."""
    t = torch.arange(2 * 2 * 6).view(2, 12, 1)
    out = _deinterleave(t, 6)
    assert torch.equal(out[:, :6, 0], t[:, 0::2, 0]) and torch.equal(out[:, 6:, 0], t[:, 1::2, 0])
    assert torch.equal(_deinterleave(t, 4)[:, :4, 0], t[:, 0:8:2, 0])  # padded tail dropped


def test_triton_kernels_topk_conversion():
    m, e, k = 7, 10, 3
    ids, tw = _routing(m, e, k, seed=9)
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat * 1000 + torch.arange(flat.numel()))  # expert-sorted slots (combine index)
    routing = SimpleNamespace(n_expts_act=k, expt_hist=torch.bincount(flat, minlength=e),
                              gate_scal=tw.reshape(-1)[order])  # fmt: skip
    w2, i2 = _triton_kernels_to_standard((routing, SimpleNamespace(src_indx=order.int()), None), m)
    assert torch.equal(i2, ids) and torch.equal(w2, tw)


@pytest.mark.parametrize("arch", ["sm90", "gfx950"])
def test_configs_are_complete_and_legal(arch):
    cfgs = load_configs("mxfp4_moe", arch)
    for fmt in ("w4a16", "w4a4"):
        for b in ("tpe<=1", "tpe<=4", "tpe<=16", "tpe<=64", "tpe<=256", "tpe>256"):
            c = cfgs[f"{fmt}:{b}"]
            assert c["BLOCK_M"] >= 16 and c["BLOCK_K1"] % 64 == 0 and c["BLOCK_K2"] % 64 == 0
            assert fmt == "w4a16" or c["BLOCK_N1"] % 32 == 0  # GEMM1 quantizes its output per 32
            assert arch != "gfx950" or (c["dot_scaled"] and c["BLOCK_K1"] % 128 == 0)


COMPILE_ALL = """
import json, sys
from speedrun.eval.kernels.aot import compile_spec
from speedrun.eval.kernels.mxfp4_moe_compile import compile_specs
results = [compile_spec(s, sys.argv[1]) for s in compile_specs(sys.argv[1])]
print(json.dumps({"n": len(results), "bad": [(r.name, r.error) for r in results if not r.ok],
                  "mma": sorted({m for r in results for m in r.mma})}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm90", "gfx950"])
def test_aot_compile_all_configs(arch):
    """Every kernel x config compiles for the target and uses its matrix unit (w4a4 on gfx950: v_mfma_scale).
    Runs in a child process: kernels decorated under TRITON_INTERPRET=1 cannot be compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_ALL, arch], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # 2 GEMMs per bucket (sm90: + plain fallback), 6 aux; sm90: + 3 FP8 conversions, + both GEMMs of the 2 gluon_ws
    # decode rows on the 8 decode buckets and of the 4 prefill rows (2 a model, once each)
    assert res["n"] == (28 + 7 + 32 + 8 if arch == "sm90" else 24 + 6) and not res["bad"], res["bad"]
    assert arch != "gfx950" or any(m.startswith("v_mfma_scale") for m in res["mma"])


def test_round5_sweep_variants_compile_without_spills_and_cut_issue_on_sm90():
    """The AOT evidence PERF.md's "Round 5 candidates" quotes (mxfp4_moe_sass, clean process) at DeepSeek M 128's
    bucket (w4a4:tpe<=16): no spills, each K step's wgmmas back to back (one wait per accumulator). The bucket now
    runs a4_bm16 (BLOCK_M 16, tuned from the round-5 sweep), which issues fewer warp-instructions per weight KiB in
    both GEMMs than round 4's BLOCK_M 32; a4_g2_bn128 on round 4's bucket does in GEMM2 at >= 2 CTAs/SM. (The
    bucket as round 8 served it: the codes path at GEMM1's 128-deep K tile; round 9 moved it on.)"""
    from speedrun.eval.kernels.mxfp4_moe_sass import GemmStats

    r8 = "a_qdq=false,BLOCK_K1=128,stages1=4"
    r4, g2_r4 = f"{r8},BLOCK_M=32", f"{r8},BLOCK_M=32,BLOCK_N2=128,warps2=8"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_moe_sass", "--json", "--bucket", "w4a4:tpe<=16",
           r8, r4, g2_r4]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = {(d["variant"], d["gemm"]): GemmStats(**d) for d in json.loads(proc.stdout.splitlines()[-1])}
    for key, st in stats.items():
        assert st.spill == 0 and st.mma >= 8 and st.mma_waits == st.gemm % 2 + 1, (key, st)
    cfg1, cfg2 = stats[r8, 1], stats[r8, 2]
    assert cfg1.block[0] == 16 and cfg1.warp_per_kib() < 0.95 * stats[r4, 1].warp_per_kib()
    assert cfg2.warp_per_kib() < 0.9 * stats[r4, 2].warp_per_kib()
    g2 = stats[g2_r4, 2]
    assert (
        g2.block[1] == 128 and g2.warps == 8 and g2.ctas_per_sm >= 2 and g2.warp_per_kib() < stats[r4, 2].warp_per_kib()
    )


def test_bench_reporting_on_fake_rows(tmp_path):
    from speedrun.eval.kernels import mxfp4_moe_bench as bench

    sets = [{"ids": torch.tensor([[0, 1], [1, 2]]), "x": torch.zeros(2, 64)}]
    per_expert = 2 * 32 * 64 // 2 + 2 * 32 * 64 // 32 + 64 * 32 // 2 + 64 * 32 // 32
    assert bench.min_bytes(sets, 8, 64, 32, gptoss=False) == 3 * per_expert + 2 * 2 * 64 * 2
    base = dict(gpu="H100", model="m", experts=8, topk=2, hidden=64, inter=32)
    rows = [dict(impl="speedrun", m=1, us=10.0, gbps=100.0, pct_hbm_peak=3.0, **base),
            dict(impl="triton_kernels", m=1, us=15.0, gbps=66.0, pct_hbm_peak=2.0, **base),
            dict(impl="flashinfer", m=1, us=None, gbps=None, error="setup: x", **base)]  # fmt: skip
    text = bench.summary(rows)
    assert "1.50" in text and "error" in text
    bench.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("layout,h,stored", [("swz", 64, "swz"), ("plain", 64, "plain"), ("swzg64", 96, "swz")])
def test_gptoss_process_weights_keeps_sglang_semantics(monkeypatch, layout, h, stored):
    """Raw SGLang layout (interleaved gate/up rows, bf16 biases) through our process hook (each value layout; 64-row
    groups over 96 hidden rows fall back to row-major swz128, and the report says so), then our kernels, against
    SGLang's own formula on the raw layout: gate = h[..., ::2], up = h[..., 1::2]."""
    from speedrun.overlays import environ, report
    from speedrun.overlays.mx.format import dequant_mxfp4
    from speedrun.overlays.mxfp4_moe import sglang_hook as hook

    monkeypatch.setattr(hook, "_check_serving", lambda self: None)
    monkeypatch.setenv("SPEEDRUN_MXFP4_MOE_LAYOUT", layout)
    environ.load()  # what register() does in a server process
    report.start()
    e, n, m, topk = 4, 32, 3, 2
    raw = _weights(e, n, h, seed=11)
    g = torch.Generator().manual_seed(12)
    layer = torch.nn.Module()
    for name, t in (("w13_weight", raw.w13), ("w13_weight_scale", raw.w13_scale), ("w2_weight", raw.w2),
                    ("w2_weight_scale", raw.w2_scale), ("w13_weight_bias", torch.randn(e, 2 * n, generator=g)),
                    ("w2_weight_bias", torch.randn(e, h, generator=g))):  # fmt: skip
        layer.register_parameter(name, torch.nn.Parameter(t.clone(), requires_grad=False))
    layer.intermediate_size_per_partition = n
    b13, b2 = layer.w13_weight_bias.data.clone(), layer.w2_weight_bias.data.clone()
    cfg = SimpleNamespace(gemm1_alpha=1.702, gemm1_clamp_limit=7.0, gate_up_interleaved=True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    hook._gptoss_process_weights(None, SimpleNamespace(moe_runner_config=cfg), layer)
    assert layer._speedrun_moe.layout == stored and layer.w13_weight.data_ptr() == layer._speedrun_moe.w13.data_ptr()
    assert ("mxfp4_moe_layout_note" in report.snapshot()) == (layout != stored)
    # the plan and the backend are fixed at load: apply reads neither the environment nor a config file
    assert layer._speedrun_plan.layout == stored and layer._speedrun_backend == "triton"
    assert set(layer._speedrun_plan.launches) == {f"w4a16:tpe<={b}" for b in (1, 4, 16, 64, 256)} | {"w4a16:tpe>256"}
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=13)
    out = moe(x, layer._speedrun_moe, ids, tw, cfg=TINY)
    want = torch.zeros(m, h)
    for t in range(m):
        for j in range(topk):
            ex = int(ids[t, j])
            hh = (x[t].float() @ dequant_mxfp4(raw.w13[ex], raw.w13_scale[ex]).T + b13[ex]).bfloat16().float()
            gate, up = hh[0::2].clamp(max=7.0), hh[1::2].clamp(-7.0, 7.0)
            act = (gate * torch.sigmoid(1.702 * gate) * (up + 1)).bfloat16().float()
            want[t] += tw[t, j] * (act @ dequant_mxfp4(raw.w2[ex], raw.w2_scale[ex]).T + b2[ex])
    _check(out, want.bfloat16(), 1e-2)


@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("a4", [False, True])
def test_swz128_weights_match_reference_on_plain(swap, a4):
    """swz128 experts (K of both GEMMs padded: 160 -> 256, 64 -> 128; BLOCK_K 64 -> 128) give the reference's
    result computed on the plain tensors; `plain` restores those tensors exactly."""
    e, n, h, topk, m = 5, 64, 160, 3, 7
    w = _weights(e, n, h, seed=15, a4=a4, act=Act.SILU if a4 else Act.SWIGLU_OAI)
    if not a4:
        g = torch.Generator().manual_seed(16)
        w.b13, w.b2 = torch.randn(e, 2 * n, generator=g), torch.randn(e, h, generator=g)
    ws = moe_mod.swizzled(w, chunk=2)
    assert ws.swz and ws.w13.shape == (e, 2 * n, 256 // 8) and ws.w2.shape == (e, h, 128 // 8) and ws.mul1
    back = moe_mod.plain(ws, h, n)
    assert all(torch.equal(a, b) for a, b in ((back.w13, w.w13), (back.w13_scale, w.w13_scale),
                                              (back.w2, w.w2), (back.w2_scale, w.w2_scale)))  # fmt: skip
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(17)).bfloat16()
    ids, tw = _routing(m, e, topk, seed=18)
    ids[0, 1] = -1
    out = moe(x, ws, ids, tw, cfg={**TINY, "swap": swap, "deq": 2, "split1": 2})
    _check(out, _ref(x, w, ids, tw), 3e-2 if a4 else 1e-2)
    with pytest.raises(ValueError, match="dot_scaled"):  # found when the plan is made, before any launch
        make_plan(ws, arch="sm90", config={**TINY, "dot_scaled": True})


def test_b_regs_knob_reaches_cuda_kernels_only():
    """b_regs (PERF.md Round 5: w4a16 wgmmas back to back) sets B_REGS only for swz128 experts on CUDA; the
    interpreter ignores it (same result bit for bit), AMD rejects it when the plan is made; off, the flags are
    exactly the shipped ones."""
    cfg = MoeBucket.checked({**TINY, "swap": True, "b_regs": True}, "tiny")
    assert moe_mod.sm90_flags(cfg, cuda=True, swz=True)["B_REGS"] is True
    assert "B_REGS" not in moe_mod.sm90_flags(cfg, cuda=False, swz=True)
    assert moe_mod.sm90_flags(cfg.replace(b_regs=False), cuda=True, swz=True) == {
        "SWAP": True, "W_DEQ": 0, "W_ASM": True, "W_SWZ": True, "W_MUL1": False}  # fmt: skip
    with pytest.raises(ValueError, match="b_regs is an sm90 knob"):
        moe_mod.resolve(cfg, True, True, "gfx950", cuda=False)
    e, n, h, topk, m = 4, 64, 128, 2, 5
    w = moe_mod.swizzled(_weights(e, n, h, seed=31, act=Act.SWIGLU_OAI), chunk=2)
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(32)).bfloat16()
    ids, tw = _routing(m, e, topk, seed=33)
    assert torch.equal(moe(x, w, ids, tw, cfg=cfg), moe(x, w, ids, tw, cfg=cfg.replace(b_regs=False)))


def test_b_regs_w4a16_wgmmas_back_to_back_on_sm90():
    """The AOT evidence of PERF.md's "b_regs" rows (mxfp4_moe_sass, clean process) at GPT-OSS's tpe<=1 and
    tpe<=64 buckets: the shipped kernels wait after every wgmma (Triton 3.6's "properly async" dot: if this part
    fails, Triton stopped serializing and b_regs may be moot); b_regs with GEMM1's K tile at 128 (round 7's
    a16_bregs: fewer instructions, yet 9-19% slower on the H100) issues the same wgmmas with one wait
    per accumulator, no spills, no fewer CTAs per SM and fewer instructions per K step."""
    from speedrun.eval.kernels.mxfp4_moe_sass import GemmStats

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_moe_sass", "--json", "--bucket", "w4a16:tpe<=1",
           "--bucket", "w4a16:tpe<=64", "config", "b_regs=true,BLOCK_K1=128,stages1=4"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = {(d["bucket"], d["variant"], d["gemm"]): GemmStats(**d) for d in json.loads(proc.stdout.splitlines()[-1])}
    for (bucket, variant, gemm), new in stats.items():
        if variant == "config":
            continue
        old = stats[bucket, "config", gemm]
        assert old.mma_waits == old.mma, (bucket, gemm, old)
        assert new.mma_waits == 3 - gemm and new.spill == 0, (bucket, gemm, new)
        assert new.mma * old.block[2] == old.mma * new.block[2], (bucket, gemm)  # the same wgmmas per K element
        assert new.ctas_per_sm >= old.ctas_per_sm and new.warp_per_kib() < old.warp_per_kib(), (bucket, gemm, new)


@pytest.mark.parametrize("variant", ["p16_swap_bn128", "p16_bn128"])
def test_prefill_sweep_variants_match_reference(variant):
    """Round 6's GPT-OSS prefill variants (PERF.md "Round 6 candidates": every tile knob set, 128-slot blocks, 128
    weight rows) on swz128 experts under the interpreter: two K steps, two GEMM2 N tiles, one partly filled block per
    expert, an EP-filtered slot (b_regs is CUDA-only: test_b_regs_knob_reaches_cuda_kernels_only)."""
    from speedrun.eval.kernels.mxfp4_moe_bench import SWEEP_VARIANTS, variant_cfg

    var = SWEEP_VARIANTS[variant]
    assert var["prefill"] and var["fmt"] == "w4a16"
    cfg, layout = variant_cfg(moe_mod.table("sm90")["w4a16:tpe<=256"], var)
    assert layout == CUDA_LAYOUT and all(getattr(cfg, k) == v for k, v in var.items() if k not in ("fmt", "prefill"))
    e, n, h, topk, m = 3, 128, 256, 2, 40
    w = _weights(e, n, h, seed=41, act=Act.SWIGLU_OAI)
    g = torch.Generator().manual_seed(42)
    w.b13, w.b2 = torch.randn(e, 2 * n, generator=g), torch.randn(e, h, generator=g)
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=43)
    ids[0, 1] = -1
    _check(moe(x, moe_mod.swizzled(w, chunk=2), ids, tw, cfg=cfg), _ref(x, w, ids, tw), 1e-2)


def test_prefill_sweep_variants_sass_on_sm90():
    """The AOT evidence of PERF.md's "Round 6 candidates" table (mxfp4_moe_sass, clean process) at GPT-OSS M 4096's
    bucket: round 4's GEMM1 fed m64n64 wgmmas from shared memory (the decoded tile stored there); no variant
    spills; p16_swap_bn128 runs m64n128 wgmmas with the weights from registers in both GEMMs, one wait per
    accumulator, fewer issue clocks per tensor clock and fewer barriers;
    p16_bn128 (the bucket now, tuned from the round-5 sweep) widens round 4's GEMM1 wgmma to n128."""
    from speedrun.eval.kernels.mxfp4_moe_sass import GemmStats

    r4 = "BLOCK_N1=64,BLOCK_K1=64,BLOCK_K2=64"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_moe_sass", "--json", "--bucket", "w4a16:tpe<=256",
           r4, "p16_swap_bn128", "p16_bn128"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = {(d["variant"], d["gemm"]): GemmStats(**d) for d in json.loads(proc.stdout.splitlines()[-1])}
    assert all(s.spill == 0 and s.mma_waits == 3 - s.gemm for s in st.values()), st
    assert st[r4, 1].mma_kind == "64x64x16 SS" and st["p16_bn128", 1].mma_kind == "64x128x16 SS"
    for gemm in (1, 2):
        old, new = st[r4, gemm], st["p16_swap_bn128", gemm]
        assert new.mma_kind == "64x128x16 RS" and new.ops.get("STSM", 0) == 0
        assert new.issue_per_tensor() < old.issue_per_tensor() and new.syncs() < old.syncs(), (gemm, new)
    assert st["p16_bn128", 1].issue_per_tensor() < st[r4, 1].issue_per_tensor()


def test_bucket_grammar_and_picking():
    """One grammar for every op's table: `[<fmt>:]<dim><=N` / `>N`; a value takes the first bucket holding it."""
    from speedrun.overlays.buckets import parse, select
    from speedrun.overlays.mxfp4_moe.config import check_table

    keys = ["_meta", "w4a16:tpe<=1", "w4a16:tpe<=4", "w4a16:tpe>4", "w4a4:tpe<=1", "heads<=16", "heads<=128"]
    assert select(keys, "tpe", 1.0, "w4a16") == "w4a16:tpe<=1"
    assert select(keys, "tpe", 1.5, "w4a16") == "w4a16:tpe<=4"
    assert select(keys, "tpe", 9, "w4a16") == "w4a16:tpe>4"
    assert select(keys, "tpe", 9, "w4a4") == "w4a4:tpe<=1"  # no `>` bucket: the largest
    assert select(keys, "heads", 17) == "heads<=128" and select(keys, "heads", 300) == "heads<=128"
    assert moe_mod.bucket_key("w4a4", 7, 9, 257, "sm90") == "w4a4:tpe<=1"  # 63 / 257 tokens per expert
    assert moe_mod.bucket_key("w4a16", 512, 4, 32, "sm90") == "w4a16:tpe<=64"
    with pytest.raises(ValueError, match="'tpe<4': expected"):
        parse("tpe<4")
    with pytest.raises(ValueError, match="bucket 'heads<=16': expected <w4a16|w4a4>:tpe"):
        check_table({"heads<=16": {}}, "mxfp4_moe sm90")
    with pytest.raises(ValueError, match="w4a4:tpe<=1: deq: Input should be 0 or 2"):
        check_table({"w4a4:tpe<=1": {**load_configs("mxfp4_moe", "sm90")["w4a4:tpe<=1"], "deq": 3}}, "mxfp4_moe sm90")


def test_compile_specs_come_from_the_plans_resolver():
    """The AOT specs take the GEMMs' flags, K tiles and launch options from api.resolve, as a launch does: a knob
    the hook honours (mul1 off, swap) reaches the compiled kernel; every flag is named (Triton 3.7)."""
    from speedrun.eval.kernels import mxfp4_moe_compile as mc

    cfg = moe_mod.table("sm90")["w4a16:tpe<=1"]
    run = moe_mod.resolve(cfg, True, True, "sm90", cuda=True)
    spec = mc.gemm1_spec("w4a16:tpe<=1", cfg, "sm90", swz=True)
    assert {k: spec.constexprs[k] for k in run.flags} == run.flags and spec.options == run.opts1
    assert spec.constexprs["BLOCK_K"] == run.block_k1 and set(mc.FLAGS_OFF) <= set(spec.constexprs)
    off = mc.gemm2_spec("w4a16:tpe<=1", cfg.replace(mul1=False, swap=not cfg.swap), "sm90", swz=True)
    assert off.constexprs["W_MUL1"] is False and off.constexprs["SWAP"] is not cfg.swap
    amd = mc.gemm1_spec("w4a4:tpe<=1", moe_mod.table("gfx950")["w4a4:tpe<=1"], "gfx950", swz=True)
    assert not any(amd.constexprs[k] for k in mc.FLAGS_OFF) and amd.options.get("matrix_instr_nonkdim") == 16


@pytest.mark.parametrize("a4", [True, False], ids=["w4a4", "w4a16"])
@pytest.mark.parametrize("swz", [True, False], ids=["swz128", "plain"])
@pytest.mark.parametrize("group2", [2, 5])
def test_gemm2_tile_groups_match_one_tile_per_program(a4, swz, group2):
    """group2 (GEMM2 walks consecutive N tiles in one loop): the same output, bit for bit, as one tile per
    program, and within tolerance of the reference: 5 N tiles of 64 (group 2 leaves a tile past the end, masked;
    group 5 covers them exactly), 2 K steps per tile, biases on the w4a16 experts."""
    e, n, h, topk, m = 3, 256, 320, 2, 9
    w, g, kw = _model_experts(e, n, h, a4, seed=51)
    w = moe_mod.swizzled(w, chunk=2) if swz else w
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=53)
    cfg = MoeBucket(**{**TINY, "BLOCK_N2": 64, "BLOCK_K2": 128})
    one = moe(x, w, ids, tw, cfg=cfg)
    assert torch.equal(moe(x, w, ids, tw, cfg=cfg.replace(group2=group2)), one)
    plain = w if not swz else _weights(e, n, h, seed=51, **kw)
    if not a4:
        plain.b13, plain.b2 = w.b13, w.b2
    _check(one, _ref(x, plain, ids, tw), 5e-2 if a4 else 1e-2)


def test_gemm2_tile_groups_need_whole_k_tiles():
    """The grouped loop has no K tail: a forced config whose GEMM2 K tile does not divide the intermediate size is
    a ValueError naming group2, at plan time; a table bucket (it serves every model) runs such experts with
    group2 1 instead."""
    w = _weights(2, 96, 128, seed=54, act=Act.SWIGLU_OAI)
    with pytest.raises(ValueError, match="group2 2 needs the intermediate size"):
        make_plan(w, arch="sm90", config=MoeBucket(**{**TINY, "BLOCK_K2": 64, "group2": 2}))
    grouped = [k for k, c in moe_mod.table("sm90").items() if c.group2 > 1 and 96 % c.BLOCK_K2]
    assert grouped, "the sm90 table has no grouped bucket this test can exercise"
    w4 = _weights(2, 96, 128, seed=54, a4=True)
    plan = make_plan(w4, arch="sm90")
    assert all(run.cfg.group2 == 1 for run in plan.launches.values())


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # silu of large negatives: 0 either way
@pytest.mark.parametrize("swz,swap,split1", [(True, True, 2), (True, False, 1), (False, True, 1)])
def test_a_qdq_is_bit_identical_to_activation_codes(swz, swap, split1):
    """a_qdq (w4a4 activations handed over as bf16 on the MXFP4 grid) multiplies the values the codes path decodes
    in each CTA: the same output bit for bit (x with a zero block and a block of large values; GEMM1's output
    re-quantized either way); qdq_rows is dequant(quant_rows). A knob of the dequant path only."""
    e, n, h, topk, m = 5, 64, 256, 3, 9
    w = _weights(e, n, h, seed=21, a4=True, act=Act.SILU)
    w = moe_mod.swizzled(w, chunk=2) if swz else w
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(22)).bfloat16()
    x[0, :32], x[1, 32:64] = 0, x[1, 32:64] * 16
    ids, tw = _routing(m, e, topk, seed=23)
    ids[2, 0] = -1
    cfg = {**TINY, "swap": swap, "deq": 2, "split1": split1}
    want = moe(x, w, ids, tw, cfg=cfg)
    got = moe(x, w, ids, tw, cfg={**cfg, "a_qdq": True})
    assert torch.equal(got, want)
    assert not torch.equal(moe(x + 0.5, w, ids, tw, cfg={**cfg, "a_qdq": True}), want)  # the knob reads x
    q, s = quant_rows(x)
    assert torch.equal(moe_mod.qdq_rows(x), dequant_mxfp4(q, s, torch.bfloat16))
    with pytest.raises(ValueError, match="a_qdq"):
        make_plan(_weights(e, n, h, seed=21, a4=True), arch="sm90", config={**TINY, "a_qdq": True, "dot_scaled": True})


def test_a_qdq_sweep_variants_on_sm90():
    """The AOT evidence of PERF.md round 7 (mxfp4_moe_sass, clean process) at DeepSeek's decode bucket tpe<=1:
    bf16-grid activations alone make the wgmmas wait one by one (the w4a16 load path's serialization); with
    b_regs they issue back to back, and both GEMMs run fewer warp-instructions per weight KiB than the codes path,
    without spills, at >= 4 CTAs per SM (round 8's bucket: GEMM1's K tile 128; round 9 serves a_qdq at 256)."""
    from speedrun.eval.kernels.mxfp4_moe_sass import GemmStats

    tile = "BLOCK_K1=128,stages1=4"
    codes, qdq, qdq_bregs = f"a_qdq=false,{tile}", f"a_qdq=true,{tile}", f"a_qdq=true,b_regs=true,{tile}"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "speedrun.eval.kernels.mxfp4_moe_sass", "--json", "--bucket", "w4a4:tpe<=1",
           codes, qdq, qdq_bregs]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = {(d["variant"], d["gemm"]): GemmStats(**d) for d in json.loads(proc.stdout.splitlines()[-1])}
    for gemm in (1, 2):
        old, alone, new = stats[codes, gemm], stats[qdq, gemm], stats[qdq_bregs, gemm]
        assert alone.mma_waits == alone.mma, (gemm, alone)
        assert new.mma == old.mma and new.mma_waits == 3 - gemm and new.spill == 0, (gemm, new)
        assert new.warp_per_kib() < 0.9 * old.warp_per_kib() and new.ctas_per_sm >= 4, (gemm, new, old)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # silu of large negatives: 0 either way
@pytest.mark.parametrize("swz,bk", [(True, 128), (False, 256)])
def test_a_scale_words_are_bit_identical_to_byte_loads(swz, bk):
    """a_scale_words (w4a4 codes path: activation scales loaded as int32 words, split into bytes in registers)
    reads the same scales: the same output bit for bit, with a masked tail row block and an EP-filtered slot; a
    forced config that cannot have it (hidden not a multiple of 128) is a ValueError at plan time."""
    e, n, h, topk, m = 5, 128, 256, 3, 9
    w = _weights(e, n, h, seed=31, a4=True, act=Act.SILU)
    w = moe_mod.swizzled(w, chunk=2) if swz else w
    x = torch.randn(m, h, generator=torch.Generator().manual_seed(32)).bfloat16()
    x[1, 32:64] *= 16
    ids, tw = _routing(m, e, topk, seed=33)
    ids[2, 0] = -1
    cfg = {**TINY, "BLOCK_K1": bk, "BLOCK_K2": bk, "swap": True, "deq": 2}
    plan = make_plan(w, arch="sm90", config={**cfg, "a_scale_words": True})
    assert plan.launches["forced"].flags["A_SW"]
    got = fused_moe_mxfp4(x, w, ids, tw, plan)
    assert torch.equal(got, moe(x, w, ids, tw, cfg=cfg))
    with pytest.raises(ValueError, match="a_scale_words"):
        make_plan(_weights(e, n, 160, seed=31, a4=True), arch="sm90", config={**cfg, "a_scale_words": True})


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # silu of large negatives: 0 either way
@pytest.mark.parametrize("a4,layout,split1,group2", [(True, "swzg16", 2, 1), (False, "swzg16", 1, 2),
                                                    (True, "swzg64", 1, 2), (False, "swzg64", 2, 1)])  # fmt: skip
def test_row_groups_are_bit_identical_to_row_major(a4, layout, split1, group2):
    """Experts with swz128 rows in groups of 16 / 64 (mx.layout group_rows) hold the same values at other
    addresses: both GEMMs read them back exactly, the output equals the row-major layout's bit for bit (split-K
    GEMM1, GEMM2 tile groups, biases, a masked row block, an EP-filtered slot), and plain() recovers the plain
    experts. A tile that splits a group (64-row groups, 32-row tiles) is a ValueError at plan time."""
    from speedrun.overlays.mxfp4_moe.config import Layout

    e, n, h, topk, m = 3, 128, 256, 2, 9
    w, g, _ = _model_experts(e, n, h, a4, seed=61)
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=63)
    ids[2, 0] = -1
    rowmajor = moe_mod.swizzled(w, chunk=2)
    grouped = moe_mod.swizzled(w, chunk=2, layout=Layout(layout))
    assert grouped.layout == layout and grouped.row_group == Layout(layout).row_group
    assert grouped.w13.shape == rowmajor.w13.shape and not torch.equal(grouped.w13, rowmajor.w13)
    cfg = {**TINY, "BLOCK_N1": 64, "BLOCK_K1": 128, "BLOCK_N2": 64, "BLOCK_K2": 128, "swap": True, "split1": split1,
           "group2": group2}  # fmt: skip
    plan = make_plan(grouped, arch="sm90", config=cfg)
    assert plan.layout == layout and plan.launches["forced"].flags["W_ROWG"] == grouped.row_group
    assert torch.equal(fused_moe_mxfp4(x, grouped, ids, tw, plan), moe(x, rowmajor, ids, tw, cfg=cfg))
    back = moe_mod.plain(grouped, h, n)
    assert torch.equal(back.w13, w.w13) and torch.equal(back.w2_scale, w.w2_scale) and back.row_group == 1
    if grouped.row_group > 32:
        with pytest.raises(ValueError, match=f"BLOCK_N2 32 is not a multiple of the {layout} row group"):
            make_plan(grouped, arch="sm90", config={**cfg, "BLOCK_N2": 32})
    with pytest.raises(ValueError, match="experts are in swz; convert plain experts"):
        moe_mod.swizzled(rowmajor, layout=Layout(layout))


@pytest.mark.parametrize("a4", [False, True], ids=["w4a16", "w4a4"])
def test_y_bf16_rounds_each_slot_row_once(a4):
    """y_bf16: GEMM2 stores each slot's weighted row in bf16 and the combine sums in fp32, stock's own rounding:
    within a bf16 rounding per slot of the fp32 rows' result, and within the usual tolerance of the reference."""
    e, n, h, topk, m = 4, 64, 128, 3, 6
    w, g, kw = _model_experts(e, n, h, a4, seed=71)
    w = moe_mod.swizzled(w, chunk=2)
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=73)
    cfg = MoeBucket(**{**TINY, "BLOCK_N1": 64, "BLOCK_N2": 64, "BLOCK_K1": 128, "BLOCK_K2": 128, "swap": True})
    f32 = moe(x, w, ids, tw, cfg=cfg).float()
    b16 = moe(x, w, ids, tw, cfg=cfg.replace(y_bf16=True)).float()
    assert not torch.equal(f32, b16)
    assert ((b16 - f32).abs() <= 2 * topk * 2.0**-8 * f32.abs().amax()).all()


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # silu of large negatives: 0 either way
@pytest.mark.parametrize("m", [5, 40])
def test_a8_matches_the_fp8_activation_reference(m):
    """a8 (the w4a8 path): activations and GEMM1's output in e4m3 per 128 columns, the weights decoded to e4m3 in
    the K loop relative to each row's largest scale of the step (exact here: every block within 14 binades), FP8
    MMAs: the reference of the same semantics within fp32 summation order, an EP-filtered slot included; what the
    path needs is checked at plan time, each missing piece named."""
    e, n, h, topk = 4, 128, 256, 3
    w, g, _ = _model_experts(e, n, h, True, seed=81)
    # a row whose 128-deep step spans 14 binades (135 vs 121: still exact) and one whose step has a 2**-127 block
    # (its rebased byte floors at 0: the block reads as 0, as the reference's value nearly is)
    w.w13_scale[0, 3, :4] = torch.tensor([135, 121, 121, 121], dtype=torch.uint8)
    w.w2_scale[1, 5, :4] = torch.tensor([0, 134, 134, 134], dtype=torch.uint8)
    ws = moe_mod.swizzled(w, chunk=2)
    x = torch.randn(m, h, generator=g).bfloat16()
    ids, tw = _routing(m, e, topk, seed=83)
    ids[1, 0] = -1
    cfg = {**TINY, "BLOCK_N1": 128, "BLOCK_K1": 128, "BLOCK_N2": 64, "BLOCK_K2": 128, "swap": False, "a8": True}
    plan = make_plan(ws, arch="sm90", config=cfg)
    assert plan.launches["forced"].flags["A8"]
    _check(fused_moe_mxfp4(x, ws, ids, tw, plan), _ref(x, w, ids, tw, a8=True), 1e-2)
    q, s = moe_mod.quant_fp8_rows(x)
    assert torch.equal((q.float().unflatten(-1, (-1, 128)) * s[..., None]).flatten(-2), qdq_fp8_groups(x))
    with pytest.raises(ValueError, match=r"a8 \(the w4a8 path\) needs swap false, K tiles of 128"):
        make_plan(ws, arch="sm90", config={**cfg, "swap": True, "BLOCK_K1": 256})
    with pytest.raises(ValueError, match="needs swz128 experts"):
        make_plan(w, arch="sm90", config=cfg)


PDL_PTX = """
import json, re, sys
from speedrun.eval.kernels import mxfp4_moe_compile as mc
from speedrun.eval.kernels.aot import compile_spec
from speedrun.overlays.mxfp4_moe import api, kernels
out = {}
for key in ("w4a4:tpe<=4", "w4a16:tpe<=16"):
    cfg = api.table("sm90")[key].replace(pdl=True)
    for spec in (mc.gemm1_spec(key, cfg, "sm90", True, 64), mc.gemm2_spec(key, cfg, "sm90", True, 64)):
        r = compile_spec(spec, "sm90")
        ops = re.findall(r"griddepcontrol\\.\\w+|prefetch\\.global\\.L2|cp\\.async\\.c[ag]", r.asm)
        out[spec.name] = {"ok": r.ok, "error": r.error, "ops": ops}
for spec in mc.aux_specs():
    if spec.name.split("/")[1] in ("sort_small", "quant_rows", "combine"):
        spec.constexprs["PDL"] = True
        spec.signature["PDL"] = "constexpr"
        r = compile_spec(spec, "sm90")
        out[spec.name] = {"ok": r.ok, "error": r.error, "ops": re.findall(r"griddepcontrol\\.\\w+", r.asm)}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_pdl_resolves_on_sm90_cuda_only_and_orders_the_chain():
    """MoeBucket.pdl becomes the launch's PDL only on CUDA sm90 and newer (not ROCm, not the interpreter, not
    sm80). The sm90 PTX (child process, as the AOT report): GEMM1 waits before anything; GEMM2 prefetches its
    weights into L2, then waits, and only then starts its cp.async pipeline (h comes from GEMM1); the sort
    triggers, the quantizer triggers and waits, the combine waits (overlays/pdl.py's rules)."""
    cfg = moe_mod.table("sm90")["w4a4:tpe<=4"].replace(pdl=True)
    for arch, cuda, want in (("sm90", True, True), ("sm100", True, True), ("sm80", True, False),
                             ("sm90", False, False), ("gfx950", False, False)):  # fmt: skip
        assert moe_mod.resolve(cfg, True, True, arch, cuda).pdl is want, (arch, cuda)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", PDL_PTX], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in res.items():
        assert r["ok"], (name, r["error"])
        ops = r["ops"]
        if "/gemm1[" in name:
            assert ops[:2] == ["griddepcontrol.wait", "griddepcontrol.launch_dependents"], (name, ops[:4])
        elif "/gemm2[" in name:
            first_copy = next(i for i, op in enumerate(ops) if op.startswith("cp.async"))
            before = ops[:first_copy]
            assert "prefetch.global.L2" in before and before[-2:] == [
                "griddepcontrol.wait",
                "griddepcontrol.launch_dependents",
            ], (name, before)
            assert before.index("prefetch.global.L2") < len(before) - 2
        else:
            want = {"mxfp4_moe/sort_small": ["griddepcontrol.launch_dependents"],
                    "mxfp4_moe/quant_rows": ["griddepcontrol.launch_dependents", "griddepcontrol.wait"],
                    "mxfp4_moe/combine": ["griddepcontrol.wait", "griddepcontrol.launch_dependents"]}[name]  # fmt: skip
            assert ops == want, (name, ops)


# ----------------------------------------------------------------------------- engine gluon_ws (plan; sm90 AOT)

WS = dict(TINY, BLOCK_N1=64, BLOCK_N2=64, stages1=4, stages2=4, swap=True, engine="gluon_ws")


@pytest.mark.parametrize("knobs,field", [({"BLOCK_N1": 128}, "BLOCK_N1"), ({"BLOCK_M": 256}, "BLOCK_M"),
                                         ({"a8": True}, "a8"), ({"stages1": 9, "BLOCK_M": 64}, "stages1"),
                                         ({"stages1": 4, "BLOCK_M": 128}, "stages1"),
                                         ({"stages2": 1}, "stages2")])  # fmt: skip
def test_ws_engine_knobs_are_refused_by_the_plan(knobs, field):
    """A gluon_ws knob the kernel cannot take is a one-line ValueError naming it when the plan is made, on any
    machine (here where the Triton kernels would run instead)."""
    w = moe_mod.swizzled(_weights(4, 64, 256, seed=1, a4=True), layout=CUDA_LAYOUT)
    with pytest.raises(ValueError, match=field):
        make_plan(w, arch="sm90", config={**WS, "a_qdq": True, **knobs})


def test_ws_engine_runs_only_where_it_applies():
    """sm90 CUDA, swz128 experts, bf16 activations (w4a16, or w4a4 with a_qdq): each GEMM's constexprs (h re-quantized
    by GEMM1 for w4a4; biases for GPT-OSS); w4a4 codes, plain experts, the interpreter: the Triton kernels."""
    a4 = moe_mod.swizzled(_weights(4, 64, 256, seed=1, a4=True), layout=CUDA_LAYOUT)
    gptoss, _, _ = _model_experts(4, 64, 256, a4=False, seed=2)
    gptoss = moe_mod.swizzled(gptoss, layout=CUDA_LAYOUT)

    def ws(w, **knobs):
        return make_plan(w, device="cuda", arch="sm90", config={**WS, **knobs}).launches["forced"].ws

    g1, g2 = ws(a4, a_qdq=True)
    assert g1 == {"BLOCK_M": 16, "ROWG": 64, "MUL1": a4.mul1, "PDL": False, "HAS_BIAS": False, "ACT": 0,
                  "GEMM1": True, "BLOCK_N": 64, "STAGES": 4, "OUT_QDQ": True}  # fmt: skip
    assert g2["GEMM1"] is False and g2["OUT_QDQ"] is False and g2["BLOCK_N"] == 64
    g1, g2 = ws(gptoss)
    assert g1["HAS_BIAS"] and g2["HAS_BIAS"] and g1["ACT"] == int(Act.SWIGLU_OAI) and not g1["OUT_QDQ"]
    assert ws(a4, a_qdq=False) is None  # activation codes: the Triton kernels decode them
    assert make_plan(a4, arch="sm90", config={**WS, "a_qdq": True}).launches["forced"].ws is None  # the CPU
    plain = _weights(4, 64, 256, seed=1, a4=True)
    assert make_plan(plain, device="cuda", arch="sm90", config={**WS, "a_qdq": True}).launches["forced"].ws is None


@pytest.mark.parametrize("pdl", [False, True])
def test_ws_engine_launches_bind_every_kernel_argument_once(monkeypatch, pdl):
    """Both ws launches (api._ws_gemms; the interpreter cannot run Gluon, so the kernel's launcher is swapped for one
    that records its call) give every parameter of the real kernel exactly one value, PDL as the plan's constexpr,
    and only the launch options the CUDA backend takes: a keyword passed twice (PDL, once in both the constexprs and
    the launch options) is a TypeError here, not on the first GPU call."""
    from speedrun.overlays.mxfp4_moe import gluon_sm90_ws

    real, launches = gluon_sm90_ws.moe_gemm_ws_kernel, interpreter.LaunchRecorder()
    monkeypatch.setattr(gluon_sm90_ws, "moe_gemm_ws_kernel", launches)
    monkeypatch.setattr(moe_mod, "sm_count", lambda device: 132)
    w = moe_mod.swizzled(_weights(4, 64, 256, seed=1, a4=True), layout=CUDA_LAYOUT)
    run = make_plan(w, device="cuda", arch="sm90", config={**WS, "a_qdq": True, "pdl": pdl}).launches["forced"]
    assert run.ws is not None and run.pdl == pdl
    t = torch.zeros(8, 8)
    s = SimpleNamespace(max_blocks=4, sorted_ids=t, expert_ids=t, num_padded=t)
    moe_mod._ws_gemms(t, t, t, w, t, t, t, s, t, t, 8, 64, 256, 1, 1, 2, run)
    assert len(launches.calls) == 2
    for _, args, kw in launches.calls:
        assert interpreter.options_of(real, args, kw) == ({"num_warps", "launch_pdl"} if pdl else {"num_warps"})
        assert kw["PDL"] == pdl


MOE_WS_PTX = r"""
import json
from speedrun.eval.kernels.aot import compile_spec
from speedrun.eval.kernels.mxfp4_moe_compile import ws_specs
from speedrun.overlays.mxfp4_moe import api
out = {}
for spec in ws_specs("sm90"):
    r = compile_spec(spec, "sm90")
    c = spec.constexprs
    rows = 2 * c["BLOCK_N"] if c["GEMM1"] else c["BLOCK_N"]
    out[spec.name] = {"ok": r.ok, "error": r.error, "shared": r.shared, "stmatrix": r.asm.count("stmatrix"),
                      "need": api.ws_shared_bytes(c["BLOCK_M"], c["BLOCK_N"], rows, c["STAGES"])}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_ws_kernels_compile_within_the_planned_shared_memory():
    """Each gluon_ws sweep row on each decode bucket (both GEMMs, sm90, child process): compiles, fits the bound
    the plan checks (api.ws_shared_bytes, within 2 KiB), and its decoder stores the bf16 weights with stmatrix."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", MOE_WS_PTX], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) >= 16
    for name, r in rows.items():
        assert r["ok"], (name, r["error"])
        assert r["shared"] <= r["need"] + 2048 and r["need"] - 32768 <= r["shared"], (name, r["shared"], r["need"])
        assert r["stmatrix"] > 0, name
