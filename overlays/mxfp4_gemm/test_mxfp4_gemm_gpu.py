"""MXFP4 GEMM on the GPU: reference checks at the brief's and DeepSeek shapes, prefill sizes, and bitwise checks of
the fused activation quantization (GPU quantizer vs torch, fused vs pre-quantized routes)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import triton
import triton.language as tl

from speedrun.eval.kernels import timer
from speedrun.eval.kernels.mxfp4_gemm_bench import (
    BRIEF,
    DEEPSEEK_NK,
    PREFILL_M,
    SWEEP_VARIANTS,
    deepseek_tp8_nk,
    variant_config,
)
from speedrun.overlays.mx import triton_helpers as mx
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mx.quant import qdq_mxfp4, quant_mxfp4
from speedrun.overlays.mxfp4_gemm import api
from speedrun.overlays.mxfp4_gemm import sglang_hook as hook
from speedrun.overlays.mxfp4_gemm.api import qdq_blocks
from speedrun.overlays.mxfp4_gemm.config import Route
from speedrun.overlays.mxfp4_gemm.reference import (
    fp8_activation_bound,
    mxfp4_gemm_ref,
    qdq_edge_blocks,
    random_mxfp4_weight,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
DECODE = [(m, n, k) for m in (1, 16, 128) for (n, k) in DEEPSEEK_NK.values()]
TP8_DECODE = [(m, n, k) for m in (1, 4, 16, 32, 64) for (n, k) in deepseek_tp8_nk().values()]
PREFILL = [(m, 2112, 7168) for m in PREFILL_M] + [(4096, 24576, 1536)]


def _case(m: int, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w, ws = random_mxfp4_weight(n, k, seed=seed, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    a = torch.randn(m, k, generator=g, device="cuda").to(torch.bfloat16)
    return a, w, ws


def _gemm(
    a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, *, config: dict | None = None, w_layout: str = "plain", **kw
) -> torch.Tensor:
    """One call through a plan made for this weight, as the hook makes it at load (`config` forces the knobs)."""
    plan = api.make_plan(w.shape[0], w.shape[1] * 2, w_layout, device=a.device, config=config)
    return api.mxfp4_gemm(a, w, ws, plan, **kw)


def _check(out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out.float() - ref.float()).abs().max().item()
    tol = 2 * 2.0**-8 * ref.float().abs().amax().item()
    assert torch.isfinite(out).all() and err <= tol, f"max err {err:.4g} > {tol:.4g}"
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("m,n,k", BRIEF + DECODE + TP8_DECODE, ids=lambda v: str(v))
def test_decode_shapes_match_reference(m: int, n: int, k: int):
    a, w, ws = _case(m, n, k, seed=n + k)
    layout = api.weight_layout(api.config_arch(a.device))  # what the hook leaves the weights in
    _check(_ours(a, w, ws, None, layout), mxfp4_gemm_ref(a, w, ws))


def _kernels_per_call(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    fn()  # compile and allocate outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("m,n,k", [(1, 2112, 7168), (16, 2112, 7168), (64, 7168, 2048), (32, 4096, 512)],
                         ids=lambda v: str(v))  # fmt: skip
def test_decode_is_one_kernel_per_call(m: int, n: int, k: int):
    """Decode sizes: activation quantization fused, split-K reduced in the same launch: one GPU kernel."""
    a, w, ws = _case(m, n, k, seed=3)
    arch = api.config_arch(a.device)
    if api.weight_layout(arch) != "plain":
        w, ws, lay = api.relayout_weight(w, ws)
    else:
        lay = "plain"
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    plan = api.make_plan(n, k, lay, device=a.device)
    names = _kernels_per_call(partial(api.mxfp4_gemm, a, w, ws, plan, out=out))
    assert len(names) == 1 and "mxfp4_gemm_kernel" in names[0], names


@pytest.mark.skipif(bool(torch.version.hip), reason="the bf16x2 PTX quantizer is the sm90 path")
def test_fused_quantizer_ptx_is_bit_exact():
    """kernels.qdq_mxfp4_fast's inline PTX on every edge block (all bf16 normals around every block scale) gives the
    reference quantizer's values bit for bit."""
    blocks = qdq_edge_blocks(subnormals=False).cuda()
    got, want = qdq_blocks(blocks, True), qdq_mxfp4(blocks)
    bad = (got.view(torch.int16) != want.view(torch.int16)).sum().item()
    assert bad == 0, f"{bad} of {blocks.numel()} values differ"


@pytest.mark.parametrize("m,n,k", PREFILL, ids=lambda v: str(v))
def test_prefill_shapes_match_reference(m: int, n: int, k: int):
    a, w, ws = _case(m, n, k, seed=7)
    layout = api.weight_layout(api.config_arch(a.device))
    _check_served(a, w, ws, _ours(a, w, ws, None, layout), layout)
    torch.cuda.empty_cache()


@pytest.mark.parametrize("route", ["fused", "prequant", "dequant_w"])
def test_every_route_at_a_prefill_size(route: str):
    a, w, ws = _case(2048, 2112, 7168, seed=3)
    cfg = api.pick_config(2048, 2112, 7168, api.config_arch(a.device)).replace(route=route)
    _check(_gemm(a, w, ws, config=cfg), mxfp4_gemm_ref(a, w, ws))


def test_gpu_quantizer_is_bit_exact():
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(512, 7168, generator=g, device="cuda")
    x = x.unflatten(-1, (224, 32)) * 2.0 ** torch.randint(-30, 30, (512, 224, 1), device="cuda", generator=g)
    x = x.flatten(-2).to(torch.bfloat16)
    x[0, :32] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.25, 0.75, 0.25, -7.0] * 4)
    packed, scales = api.quantize(x, qdq=False)
    want_p, want_s = quant_mxfp4(x)
    assert torch.equal(scales, want_s) and torch.equal(packed, want_p)
    qdq, _ = api.quantize(x, qdq=True)
    assert torch.equal(qdq, qdq_mxfp4(x))


@pytest.mark.parametrize("m,n,k", [(16, 2112, 7168), (64, 7168, 2048), (200, 3072, 1536)], ids=lambda v: str(v))
def test_fused_quant_matches_prequantized_bitwise(m: int, n: int, k: int):
    # Same config (tiles, split-K, K order): the fused A-load quantizer must give exactly the reference values.
    a, w, ws = _case(m, n, k, seed=11)
    cfg = api.pick_config(m, n, k, api.config_arch(a.device))
    fused = _gemm(a, w, ws, config=cfg.replace(route="fused"))
    packed, scales = quant_mxfp4(a)
    assert torch.equal(fused, _gemm(packed, w, ws, a_scale=scales, config=cfg))
    if not torch.version.hip:  # sm90 path: bf16 qdq input through the dequant kernel
        assert torch.equal(fused, _gemm(qdq_mxfp4(a), w, ws, quant_a=False, config=cfg))


@pytest.mark.skipif(bool(torch.version.hip), reason="swz128 is the sm90 layout")
@pytest.mark.parametrize("m,n,k", [(1, 2112, 7168), (16, 4608, 7168), (64, 7168, 2048)], ids=lambda v: str(v))
def test_fused_swz_matches_qdq_input_bitwise(m: int, n: int, k: int):
    """The decode path as served (swz128 weights, table config, fused A-quant, split-K) equals the same GEMM fed
    the reference quantizer's bf16 values (A_MODE 0): the fused quantizer changes no value and no summation order."""
    a, w, ws = _case(m, n, k, seed=5)
    w2, s2, lay = api.relayout_weight(w, ws)
    fused = _gemm(a, w2, s2, w_layout=lay)
    cfg = api.pick_config(m, n, k, "sm90")
    assert torch.equal(fused, _gemm(qdq_mxfp4(a), w2, s2, quant_a=False, config=cfg, w_layout=lay))


@pytest.mark.skipif(bool(torch.version.hip), reason="swz128 is the sm90 layout")
def test_fp16_activations_quantize_exactly():
    """fp16 A (the hook accepts it) takes the fp32 rule, not the bf16x2 PTX (a bf16 cast would round it first)."""
    a, w, ws = _case(16, 2112, 7168, seed=7)
    a16 = (a.float() * 3.0).half()
    w2, s2, lay = api.relayout_weight(w, ws)
    cfg = api.pick_config(16, 2112, 7168, api.config_arch(a.device))
    fused = _gemm(a16, w2, s2, config=cfg, w_layout=lay)
    assert torch.equal(fused, _gemm(qdq_mxfp4(a16), w2, s2, quant_a=False, config=cfg, w_layout=lay))
    _check(fused, mxfp4_gemm_ref(a16, w, ws))


def test_split_k_is_deterministic_and_w4a16():
    a, w, ws = _case(8, 2112, 7168, seed=13)
    first = _gemm(a, w, ws)
    assert all(torch.equal(first, _gemm(a, w, ws)) for _ in range(5))
    _check(_gemm(a, w, ws, quant_a=False), mxfp4_gemm_ref(a, w, ws, quant_a=False))


def test_cuda_graph_capture_and_replay():
    a, w, ws = _case(4, 4096, 7168, seed=17)
    _gemm(a, w, ws)  # compile + allocate counters outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _gemm(a, w, ws)
    a.copy_(torch.randn_like(a))
    graph.replay()
    torch.cuda.synchronize()
    _check(out, mxfp4_gemm_ref(a, w, ws))


def _check_served(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, out: torch.Tensor, layout: str) -> None:
    """Against what the table's route for this M computes: the w4a4 reference (MXFP4 activations), or for a
    stock_fp8 bucket (FP8 activations, test_stock_fp8_gpu.py) the exact-weight product within its bound."""
    plan = api.make_plan(w.shape[0], w.shape[1] * 2, layout, device=a.device)
    if plan.launch(a.shape[0]).route != Route.STOCK_FP8:
        _check(out, mxfp4_gemm_ref(a, w, ws))
        return
    wf = dequant_mxfp4(w, ws, torch.float32)
    err = (out.float() - a.float() @ wf.t()).abs()
    assert torch.isfinite(out).all() and (err <= fp8_activation_bound(a, wf)).all()


def _ours(a, w, ws, cfg, layout, **kw):
    """Our GEMM with the weights in `layout` (re-laid out as the hook does at load time)."""
    if layout == "plain":
        return _gemm(a, w, ws, config=cfg, **kw)
    w2, s2, lay = api.relayout_weight(w, ws, layout)
    return _gemm(a, w2, s2, config=cfg, w_layout=lay, **kw)


@pytest.mark.parametrize("variant", ["config", *SWEEP_VARIANTS], ids=str)
@pytest.mark.parametrize("m,n,k", [(16, 7168, 2048), (64, 4096, 512)], ids=lambda v: str(v))
def test_every_sweep_variant_matches_reference(variant: str, m: int, n: int, k: int):
    """Each config variant the bench sweeps (layouts, routes, split-K policy, stages, tiles) is checked here first,
    at DeepSeek shapes of the 16 and 64 buckets (w4a16 too for the default)."""
    a, w, ws = _case(m, n, k, seed=19)
    arch = api.config_arch(a.device)
    cfg, layout = variant_config(api.pick_config(m, n, k, arch), variant, api.bucket_key(m, arch),
                                 api.weight_layout(arch))  # fmt: skip
    _check(_ours(a, w, ws, cfg, layout), mxfp4_gemm_ref(a, w, ws))
    if variant == "config":
        _check(_ours(a, w, ws, cfg, layout, quant_a=False), mxfp4_gemm_ref(a, w, ws, quant_a=False))


@pytest.mark.skipif(bool(torch.version.hip), reason="b_regs is an sm90 knob")
@pytest.mark.parametrize("m", [128, 256, 1024], ids=str)
def test_b_regs_prequant_buckets_match_reference(m: int):
    """The sweep's bregs variant (PERF.md Round 5) on each prequant bucket, swz128 weights, w4a16 too."""
    a, w, ws = _case(m, 7168, 2048, seed=43)
    cfg, layout = variant_config(api.pick_config(m, 7168, 2048, "sm90"), "bregs", api.bucket_key(m, "sm90"), "swz128")
    _check(_ours(a, w, ws, cfg, layout), mxfp4_gemm_ref(a, w, ws))
    _check(_ours(a, w, ws, cfg, layout, quant_a=False), mxfp4_gemm_ref(a, w, ws, quant_a=False))


@pytest.mark.skipif(bool(torch.version.hip), reason="swz128 is the sm90 layout")
@pytest.mark.parametrize("m", [1, 16, 32, 64, 128, 256, 1024, 4096], ids=str)
def test_swz128_default_path_every_bucket(m: int):
    """What the hook runs on sm90 (weights re-laid out at load): every bucket, its route, DeepSeek o_proj-like K."""
    a, w, ws = _case(m, 2112, 7168, seed=31)
    _check_served(a, w, ws, _ours(a, w, ws, None, "swz128"), "swz128")


@pytest.mark.skipif(bool(torch.version.hip), reason="swz128 is the sm90 layout")
@pytest.mark.parametrize("route", ["fused", "prequant", "dequant_w"])
def test_swz128_routes_and_prequantized_input(route: str):
    m, n, k = 16, 7168, 2048
    a, w, ws = _case(m, n, k, seed=37)
    cfg = api.pick_config(m, n, k, "sm90").replace(route=route, fused_below_nk=0)
    w2, s2, lay = api.relayout_weight(w, ws)
    _check(_gemm(a, w2, s2, config=cfg, w_layout=lay), mxfp4_gemm_ref(a, w, ws))
    packed, scales = quant_mxfp4(a)
    got = _gemm(packed, w2, s2, a_scale=scales, config=cfg, w_layout=lay)
    _check(got, mxfp4_gemm_ref(packed, w, ws, a_scale=scales))


@pytest.mark.skipif(bool(torch.version.hip), reason="swz128 is the sm90 layout")
def test_swz128_one_multiply_decode_is_exact():
    """W_MUL1 (scales <= 2) decodes exactly what the general word decode does: bitwise equal GEMMs; the dequant
    kernel's swz decode gives the plain dequant bit for bit."""
    m, n, k = 16, 4096, 7168
    a, w, ws = _case(m, n, k, seed=41)
    w2, s2, lay = api.relayout_weight(w, ws)
    assert lay == "swz128_mul1"
    cfg = api.pick_config(m, n, k, "sm90")
    one = _gemm(a, w2, s2, config=cfg, w_layout="swz128_mul1")
    assert torch.equal(one, _gemm(a, w2, s2, config=cfg, w_layout="swz128"))
    assert torch.equal(api.dequantize_weight(w2, s2, lay), api.dequantize_weight(w, ws))
    wb, sb = random_mxfp4_weight(256, 1024, seed=43, device="cuda", scale_lo=125, scale_hi=133)
    w3, s3, lay3 = api.relayout_weight(wb, sb)
    assert lay3 == "swz128"
    _check(_gemm(a[:, :1024].contiguous(), w3, s3, w_layout=lay3), mxfp4_gemm_ref(a[:, :1024], wb, sb))


@pytest.mark.skipif(bool(torch.version.hip), reason="PDL is CUDA's (sm90+)")
@pytest.mark.parametrize("m", [1, 16, 64, 128], ids=str)
def test_pdl_chain_where_each_call_reads_the_last_output(m: int):
    """GemmBucket.pdl (overlays/pdl.py): 6 calls in one CUDA graph, each call's A the previous call's output, so a
    call that read A before its wait would see a stale or half-written operand; bit for bit the plain launches'
    chain, 3 replays. M 128 is the prequant route (quantizer + GEMM, both programmatic dependents)."""
    n = k = 2048
    arch = api.config_arch(torch.device("cuda"))
    layout = api.weight_layout(arch)
    weights = []
    for i in range(6):
        w, ws = random_mxfp4_weight(n, k, seed=61 + i, device="cuda", scale_lo=118, scale_hi=121)
        weights.append(api.relayout_weight(w, ws, layout) if layout != "plain" else (w, ws, "plain"))
    cfg = api.pick_config(m, n, k, arch)
    plan, plan_pdl = (api.make_plan(n, k, weights[0][2], config=c) for c in (cfg, cfg.replace(pdl=True)))
    assert plan_pdl.launch(m).quant.pdl
    a0 = torch.randn(m, k, generator=torch.Generator(device="cuda").manual_seed(67), device="cuda").bfloat16()

    def chain(p):
        x = a0
        for w, ws, _ in weights:
            x = api.mxfp4_gemm(x, w, ws, p)
        return x

    want = chain(plan)
    assert torch.isfinite(want.float()).all()
    chain(plan_pdl)  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = chain(plan_pdl)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        got.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want), f"M={m}: the PDL chain differs from plain launches"


@pytest.mark.parametrize("variant", ["config", "old_split", "plain", "st3", "pdl"], ids=str)
def test_graph_of_rotating_calls_matches_reference(variant: str):
    """The benches' timer (eval/kernels/timer.time_calls: N calls on N weight copies, private capture stream,
    replays after cache flushes) leaves every call's output right, split-K counters included."""
    m, n, k = 16, 7168, 2048
    arch = api.config_arch(torch.device("cuda"))
    cfg, layout = variant_config(api.pick_config(m, n, k, arch), variant, "m<=16", api.weight_layout(arch))
    cases = [_case(m, n, k, seed=29 + i) for i in range(3)]
    outs = [torch.empty(m, n, dtype=torch.bfloat16, device="cuda") for _ in cases]
    relaid = [api.relayout_weight(w, ws) if layout != "plain" else (w, ws, "plain") for _, w, ws in cases]
    calls = [partial(api.mxfp4_gemm, a, w2, s2, api.make_plan(n, k, lay, config=cfg), out=o)
             for (a, _, _), (w2, s2, lay), o in zip(cases, relaid, outs, strict=True)]  # fmt: skip
    t = timer.time_calls(lambda i: calls[i], 0, copies=len(calls), replays=3)
    assert t.us > 0 and t.method == "cuda_graph", t
    for (a, w, ws), out in zip(cases, outs, strict=True):
        _check(out, mxfp4_gemm_ref(a, w, ws))


WS_VARIANTS = [v for v, knobs in SWEEP_VARIANTS.items() if knobs.get("engine") == "gluon_ws"]


def _ws_plan(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, variant: str, layout: str = "swz128_g64",
             **knobs) -> tuple[torch.Tensor, torch.Tensor, api.GemmPlan]:  # fmt: skip
    """(weight, scales, plan) of the sweep row `variant` (engine gluon_ws), re-laid out as the hook does."""
    m, n, k = a.shape[0], w.shape[0], a.shape[1]
    cfg, lay = variant_config(api.pick_config(m, n, k, "sm90"), variant, api.bucket_key(m, "sm90"), layout)
    cfg = cfg.replace(swz=cfg.swz.replace(**knobs)) if knobs else cfg
    w2, s2, lay = api.relayout_weight(w, ws, lay)
    plan = api.make_plan(n, k, lay, device=a.device, config=cfg)
    assert plan.launch(m).quant.engine == "gluon_ws", plan
    return w2, s2, plan


def _ws(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, variant: str, layout: str = "swz128_g64", **knobs):
    """Our GEMM with the sweep row `variant` (engine gluon_ws) on weights re-laid out as the hook does."""
    return api.mxfp4_gemm(a, *_ws_plan(a, w, ws, variant, layout, **knobs))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
@pytest.mark.parametrize("variant", WS_VARIANTS, ids=str)
@pytest.mark.parametrize("m", [1, 4, 16, 32, 64], ids=str)
def test_ws_engine_real_shapes_match_reference(variant: str, m: int):
    """The warp-specialized Gluon kernel (gluon_sm90_ws.py) at every DeepSeek-R1 TP8-slice decode shape and M of
    its buckets, row-grouped (and for one shape row-major) swz128 weights, against the w4a4 reference (_check:
    rtol = atol = 1e-2 and 2 bf16 ulps of the output scale); the same bits on a second call."""
    if variant == "ws_st6" and m > 32:
        pytest.skip("ws_st6 is timed at M <= 32 only (6 slots of 64 tokens do not fit)")
    for i, (n, k) in enumerate(deepseek_tp8_nk().values()):
        a, w, ws = _case(m, n, k, seed=40 + i)
        out = _ws(a, w, ws, variant)
        _check(out, mxfp4_gemm_ref(a, w, ws))
        assert torch.equal(out, _ws(a, w, ws, variant)), (n, k)
    a, w, ws = _case(m, 2112, 7168, seed=3)
    _check(_ws(a, w, ws, variant, layout="swz128"), mxfp4_gemm_ref(a, w, ws))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
@pytest.mark.parametrize("m,n,k", [(1, 2112, 7168), (16, 7168, 2048), (64, 4096, 512), (33, 3072, 1536)],
                         ids=lambda v: str(v))  # fmt: skip
@pytest.mark.parametrize("split", [1, 3], ids=str)
def test_ws_engine_is_bit_for_bit_the_triton_kernel(m: int, n: int, k: int, split: int):
    """Same tile (BN 128 weight rows x 128 K codes), same split-K: both kernels multiply the same MXFP4 values with
    the same wgmma chain in the same order, so the warp-specialized kernel gives the Triton kernel's bits."""
    a, w, ws = _case(m, n, k, seed=23)
    w2, s2, lay = api.relayout_weight(w, ws, "swz128_g64")
    bucket = api.pick_config(m, n, k, "sm90")
    tile = {"BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": split, "num_warps": 4}
    triton_cfg = bucket.replace(swz=None, **tile, num_stages=3)
    ws_cfg = bucket.replace(swz=None, **tile, engine="gluon_ws", num_stages=4)
    ours = api.mxfp4_gemm(a, w2, s2, api.make_plan(n, k, lay, device=a.device, config=ws_cfg))
    assert torch.equal(ours, api.mxfp4_gemm(a, w2, s2, api.make_plan(n, k, lay, device=a.device, config=triton_cfg)))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
def test_ws_engine_plan_takes_fp16_activations_through_the_triton_kernel():
    """The Gluon kernel reads bf16 A; a gluon_ws plan called with fp16 A runs the bucket's Triton kernel (the fp32
    quantizer rule) and matches the reference."""
    a, w, ws = _case(16, 2112, 7168, seed=31)
    a16 = (a.float() * 3.0).half()
    _check(_ws(a16, w, ws, "ws"), mxfp4_gemm_ref(a16, w, ws))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
def test_ws_engine_two_multiply_decode_and_unaligned_rows():
    """Scale bytes past 128 (the two-multiply decode, MUL1 false: every other ws test has bytes 118-124) match the
    reference; A rows the Gluon kernel cannot copy in 16-byte pieces (a column-offset view, row stride K + 1) run
    the bucket's Triton kernel and match it too."""
    a, w, ws = _case(16, 2112, 7168, seed=37)
    big = ws + 8  # bytes 126-132: 2^8 larger values, still finite in bf16
    w2, s2, plan = _ws_plan(a, w, big, "ws")
    assert not plan.launch(16).quant.consts["MUL1"], plan
    _check(api.mxfp4_gemm(a, w2, s2, plan), mxfp4_gemm_ref(a, w, big))
    wide = torch.zeros(16, 7169, dtype=torch.bfloat16, device="cuda")
    wide[:, 1:] = a
    _check(_ws(wide[:, 1:], w, ws, "ws"), mxfp4_gemm_ref(a, w, ws))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
def test_ws_engine_graph_replay_with_ragged_edges():
    """A CUDA graph of the Gluon kernel at N not a multiple of its tile (2112 = 16.5 x 128) and M not of BLOCK_M
    (split-K counters reset for the next replay): new inputs, replayed twice, match the reference."""
    a, w, ws = _case(13, 2112, 7168, seed=29)
    w2, s2, plan = _ws_plan(a, w, ws, "ws")  # the re-layout syncs with the host: outside the capture
    api.mxfp4_gemm(a, w2, s2, plan)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = api.mxfp4_gemm(a, w2, s2, plan)
    for seed in (1, 2):
        a.copy_(torch.randn(a.shape, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        _check(out, mxfp4_gemm_ref(a, w, ws))


def test_hook_relayout_then_apply_on_gpu():
    """process_weights' re-layout in place, then apply_weights on the re-laid layer: the reference result."""
    layer = torch.nn.Module()
    w, ws = random_mxfp4_weight(2112, 7168, seed=47, device="cuda")
    layer.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    layer.weight_scale = torch.nn.Parameter(ws.clone(), requires_grad=False)
    want = "plain" if torch.version.hip else "swz128_mul1"
    if want != "plain":
        assert hook.relayout(layer) == want and layer.speedrun_w_layout == want
    x = torch.randn(4, 7168, device="cuda").bfloat16()
    y = hook.apply_weights(None, SimpleNamespace(out_dtype=torch.bfloat16), layer, x)
    _check(y, mxfp4_gemm_ref(x, w, ws))


@triton.jit
def _halves_kernel(p_ptr, s_ptr, lo_ptr, hi_ptr, R: tl.constexpr, C: tl.constexpr):
    offs = tl.program_id(0) * R + tl.arange(0, R)[:, None]
    packed = tl.load(p_ptr + offs * (C // 2) + tl.arange(0, C // 2)[None, :])
    scales = tl.load(s_ptr + offs * (C // 32) + tl.arange(0, C // 32)[None, :])
    lo, hi = mx.mxfp4_halves_bf16(packed, scales, R, C, True)
    tl.store(lo_ptr + offs * (C // 2) + tl.arange(0, C // 2)[None, :], lo)
    tl.store(hi_ptr + offs * (C // 2) + tl.arange(0, C // 2)[None, :], hi)


@pytest.mark.skipif(bool(torch.version.hip), reason="inline PTX: CUDA only")
def test_inline_ptx_decode_is_bit_exact_for_every_byte_and_scale():
    """mx.mxfp4_halves_bf16 with ASM on the GPU vs the torch dequant: every byte value under every scale 1..254."""
    rows = 254 * 16  # each row: one scale per 32 elements; the 256 byte values spread over 16 rows of 16 bytes
    packed = torch.arange(256, dtype=torch.uint8, device="cuda").view(16, 16).repeat(254, 1).contiguous()
    scales = torch.arange(1, 255, dtype=torch.uint8, device="cuda").repeat_interleave(16)[:, None].contiguous()
    lo = torch.empty(rows, 16, dtype=torch.bfloat16, device="cuda")
    hi = torch.empty_like(lo)
    _halves_kernel[(rows // 16,)](packed, scales, lo, hi, 16, 32, num_warps=1)  # 8 bytes per thread: whole packs
    want = dequant_mxfp4(packed, scales, torch.bfloat16)
    got = torch.stack((lo, hi), -1).flatten(-2)
    normal = (want.float().abs() >= 2.0**-126) | (want == 0)
    assert normal.float().mean() > 0.95
    assert torch.equal(got.view(torch.int16)[normal], want.view(torch.int16)[normal])


@triton.jit
def _words_kernel(w_ptr, s_ptr, o_ptr, R: tl.constexpr, C: tl.constexpr):
    offs = tl.program_id(0) * R + tl.arange(0, R)[:, None]
    words = tl.load(w_ptr + offs * (C // 8) + tl.arange(0, C // 8)[None, :])
    scales = tl.load(s_ptr + offs * (C // 32) + tl.arange(0, C // 32)[None, :])
    vals = mx.mxfp4_words_bf16(words, scales, R, C, True)
    j = tl.arange(0, C // 8)[None, :] * 8
    for i in tl.static_range(8):
        tl.store(o_ptr + offs * C + j + i, vals[i])


@pytest.mark.skipif(bool(torch.version.hip), reason="inline PTX: CUDA only")
def test_inline_ptx_word_decode_is_bit_exact_for_every_scale():
    """mx.mxfp4_words_bf16 with ASM on the GPU vs the torch dequant: random words under every scale 1..254."""
    rows = 254 * 16
    g = torch.Generator(device="cuda").manual_seed(23)
    packed = torch.randint(0, 256, (rows, 64), dtype=torch.uint8, device="cuda", generator=g)
    scales = torch.arange(1, 255, dtype=torch.uint8, device="cuda").repeat_interleave(16)[:, None].repeat(1, 4)
    out = torch.empty(rows, 128, dtype=torch.bfloat16, device="cuda")
    _words_kernel[(rows // 16,)](packed.view(torch.int32), scales.contiguous(), out, 16, 128)
    want = dequant_mxfp4(packed, scales, torch.bfloat16)
    normal = (want.float().abs() >= 2.0**-126) | (want == 0)
    assert normal.float().mean() > 0.95
    assert torch.equal(out.view(torch.int16)[normal], want.view(torch.int16)[normal])
