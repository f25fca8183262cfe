"""GPU tests: the Triton MoE against the torch reference at the finals' real shapes (experts in the swz128 value
layout the sm90 hook stores, and plain; the reference always runs on the plain tensors), CUDA-graph capture, and
the triton_kernels routing conversion. Run: python -m pytest -m gpu overlays/mxfp4_moe -x -q"""

from __future__ import annotations

import pytest
import torch

from speedrun.eval.kernels.mxfp4_moe_bench import SWEEP_VARIANTS, variant_cfg
from speedrun.overlays.mxfp4_moe.api import (
    Act,
    MoeWeights,
    fused_moe,
    fused_moe_mxfp4,
    make_plan,
    pick_config,
    swizzled,
)
from speedrun.overlays.mxfp4_moe.config import CUDA_LAYOUT, Layout
from speedrun.overlays.mxfp4_moe.reference import moe_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]

# name: (experts, topk, hidden, intermediate per GPU, w4a4)
MODELS = {
    "gptoss": (128, 4, 2880, 2880, False),  # GPT-OSS-120B, TP1
    "dsr1_tp8": (257, 9, 7168, 256, True),  # DeepSeek-R1 MXFP4, TP8 shard + fused shared expert
}
MS = (1, 4, 16, 64, 128, 512, 4096)


def run(x, w, ids, tw, rsf=1.0, cfg=None):
    """Ours through a plan for these weights (cfg: one config for every M)."""
    return fused_moe_mxfp4(x, w, ids, tw, make_plan(w, config=cfg), rsf)


def make_weights(model: str, seed: int = 0) -> MoeWeights:
    """Random MXFP4 experts; E8M0 scales near 2**-6 so activations stay O(1) through both GEMMs."""
    e, _, h, n, a4 = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(seed)
    u8 = lambda *s, lo=0, hi=256: torch.randint(lo, hi, s, generator=g, device="cuda", dtype=torch.uint8)
    w = MoeWeights(u8(e, 2 * n, h // 2), u8(e, 2 * n, h // 32, lo=118, hi=122), u8(e, h, n // 2),
                   u8(e, h, n // 32, lo=118, hi=122), a4=a4, act=Act.SILU if a4 else Act.SWIGLU_OAI)  # fmt: skip
    if not a4:
        w.b13 = torch.randn(e, 2 * n, generator=g, device="cuda") * 0.1
        w.b2 = torch.randn(e, h, generator=g, device="cuda") * 0.1
    return w


def make_routing(model: str, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e, topk, h, _, _ = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(seed + m)
    x = torch.randn(m, h, generator=g, device="cuda").bfloat16()
    ids = torch.rand(m, e, generator=g, device="cuda").topk(topk, dim=1).indices.int()
    tw = torch.softmax(torch.randn(m, topk, generator=g, device="cuda"), -1)
    return x, ids, tw


def reference(x, w: MoeWeights, ids, tw, rsf: float = 1.0, a8: bool = False) -> torch.Tensor:
    """The torch reference (a8: the w4a8 path's FP8 activations instead of MXFP4 ones)."""
    return moe_reference(x, w.w13, w.w13_scale, w.w2, w.w2_scale, ids, tw, b13=w.b13, b2=w.b2, a4=w.a4, a8=a8,
                         act=w.act, alpha=w.alpha, limit=w.limit, routed_scaling_factor=rsf)  # fmt: skip


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-6)).item()


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    """(name, plain experts, the same experts as the sm90 hook stores them: CUDA_LAYOUT): every weight scale here is
    <= 128 (one-multiply decode)."""
    w = make_weights(request.param)
    ws = swizzled(w, layout=CUDA_LAYOUT)
    assert ws.swz and ws.mul1
    return request.param, w, ws


# the serving path everywhere; plain at M 64 and 4096
CASES = [(m, "swz") for m in MS] + [(64, "plain"), (4096, "plain"), (64, "plain_dot_scaled")]


@pytest.mark.parametrize("m,path", CASES)
def test_matches_reference_at_real_shapes(model, m, path):
    """The serving path (swz128 experts, register decode + tl.dot), the plain-layout decode, and tl.dot_scaled
    (Triton's own upcast on sm90, plain experts only)."""
    name, w, ws = model
    x, ids, tw = make_routing(name, m)
    rsf = 2.5 if w.a4 else 1.0
    cfg = pick_config(w, m, ids.shape[1])
    if path == "plain_dot_scaled":  # Triton's upcast takes the codes (a_qdq hands bf16 to the dequant path)
        cfg = cfg.replace(dot_scaled=True, a_qdq=False)
    if path != "swz":  # the w4a8 path (DeepSeek's served prefill bucket) needs swz128 experts: w4a4 codes instead
        cfg = cfg.replace(a8=False)
    out = run(x, ws if path == "swz" else w, ids, tw, rsf, cfg=cfg)
    ref = reference(x, w, ids, tw, rsf, a8=cfg.a8)  # a8: FP8 activations, the semantics of that path
    # w4a4: a 1-ulp bf16 difference in the GEMM1 output can flip an MXFP4 code of the re-quantized activation.
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) < (2e-2 if w.a4 else 1e-2), f"{name} M={m}: rel err {rel_err(out, ref):.4f}"


def test_ep_filtered_slots_contribute_nothing(model):
    name, w, ws = model
    x, ids, tw = make_routing(name, 64)
    ids[:, 1::2] = -1
    assert rel_err(run(x, ws, ids, tw), reference(x, w, ids, tw)) < (2e-2 if w.a4 else 1e-2)


def test_swz_two_multiply_decode_when_a_scale_exceeds_128(model):
    """A weight scale byte > 128 makes the one-multiply decode inexact: `swizzled` must then pick the other."""
    name, w, _ = model
    w2 = MoeWeights(**{**w.__dict__, "w13_scale": w.w13_scale.clone()})
    w2.w13_scale[:, 0, 0] = 129  # 2**2 (the smallest byte over 128): one block 2**7+ larger, still finite
    ws = swizzled(w2)
    assert not ws.mul1
    x, ids, tw = make_routing(name, 16, seed=3)
    assert rel_err(run(x, ws, ids, tw), reference(x, w2, ids, tw)) < (2e-2 if w.a4 else 1e-2)


def test_cuda_graph_replay_follows_new_routing(model):
    name, _, w = model
    x, ids, tw = make_routing(name, 8)
    run(x, w, ids, tw)  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run(x, w, ids, tw)
    torch.cuda.current_stream().wait_stream(stream)
    x2, ids2, tw2 = make_routing(name, 8, seed=7)
    x.copy_(x2)
    ids.copy_(ids2)
    tw.copy_(tw2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, run(x, w, ids, tw))  # deterministic (fixed-order combine, no atomics)


def test_triton_kernels_routing_conversion():
    tk_routing = pytest.importorskip("sglang.srt.layers.moe.topk").__dict__.get("routing")
    if tk_routing is None:
        pytest.skip("triton_kernels routing not importable")
    from speedrun.overlays.mxfp4_moe.sglang_hook import _triton_kernels_to_standard

    logits = torch.randn(33, 128, device="cuda")
    routing, gather, scatter = tk_routing(logits, 4, sm_first=False)
    tw, ids = _triton_kernels_to_standard((routing, gather, scatter), 33)
    want_w, want_ids = torch.softmax(logits.topk(4, dim=1).values, -1), logits.topk(4, dim=1).indices
    order_got, order_want = ids.long().sort(1), want_ids.sort(1)
    assert torch.equal(order_got.values, order_want.values)
    assert torch.allclose(tw.gather(1, order_got.indices), want_w.gather(1, order_want.indices), atol=1e-2)


@pytest.mark.parametrize("m", [1, 32, 128, 900])
def test_pdl_chain_in_a_graph_matches_plain_launches(model, m):
    """The call's kernels as a PDL chain (MoeBucket.pdl; overlays/pdl.py), 6 calls back to back in one CUDA graph on
    different routings and replayed 3 times: bit for bit the plain launches' results (PDL changes when a kernel
    starts, never what it computes; a missing wait shows as a stale or half-written operand). M 900 on DeepSeek: the
    one-CTA sort's largest size."""
    name, _, ws = model
    cfg = pick_config(ws, m, MODELS[name][1])
    plan, plan_pdl = make_plan(ws, config=cfg), make_plan(ws, config=cfg.replace(pdl=True))
    assert plan_pdl.launch(m, MODELS[name][1]).pdl
    calls = [make_routing(name, m, seed=20 + i) for i in range(6)]
    want = [fused_moe_mxfp4(x, ws, ids, tw, plan) for x, ids, tw in calls]
    for x, ids, tw in calls[:1]:  # compile outside the capture
        fused_moe_mxfp4(x, ws, ids, tw, plan_pdl)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = [fused_moe_mxfp4(x, ws, ids, tw, plan_pdl) for x, ids, tw in calls]
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        for out in outs:
            out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        for i, (out, ref) in enumerate(zip(outs, want, strict=True)):
            assert torch.equal(out, ref), f"{name} M={m} call {i}: PDL chain differs from plain launches"


@pytest.mark.parametrize("variant", list(SWEEP_VARIANTS))
def test_every_sweep_variant_matches_reference(model, variant):
    """Each config variant the bench sweeps (layouts, tiles, decode, prefill tiles) is checked here first: at M 1,
    prefill variants at M 4096 on GPT-OSS (where the sweep times them; the sweep itself checks every variant at
    its other shapes with rel_diff_vs_config)."""
    name, w, ws = model
    var = SWEEP_VARIANTS[variant]
    if var.get("fmt", w.fmt) != w.fmt:  # e.g. a4_group8 needs DeepSeek's intermediate size (whole K tiles)
        pytest.skip(f"{variant}: a {var['fmt']} variant (the sweep times it on the other model only)")
    m = 4096 if var.get("prefill") else 1
    x, ids, tw = make_routing(name, m, seed=5)
    cfg, layout = variant_cfg(pick_config(w, m, ids.shape[1]), var)
    experts = {CUDA_LAYOUT.value: ws, "plain": w}.get(layout) or swizzled(w, layout=Layout(layout))
    out = run(x, experts, ids, tw, cfg=cfg)
    ref = reference(x, w, ids, tw, a8=cfg.a8)
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) < (2e-2 if w.a4 else 1e-2), f"{name} M={m} {variant}: rel err {rel_err(out, ref):.4f}"


WS_VARIANTS = [v for v, var in SWEEP_VARIANTS.items() if var.get("engine") == "gluon_ws" and not var.get("prefill")]
WS_PREFILL = [v for v, var in SWEEP_VARIANTS.items() if var.get("engine") == "gluon_ws" and var.get("prefill")]


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
@pytest.mark.parametrize("variant", WS_VARIANTS)
@pytest.mark.parametrize("m", [1, 4, 16, 32, 64, 128])
def test_ws_engine_matches_reference_at_real_shapes(model, variant, m):
    """The warp-specialized persistent GEMMs (gluon_sm90_ws.py) on the served experts (CUDA_LAYOUT) at every decode
    bucket's M, both models (DeepSeek: a_qdq, split GEMM1 at small M; GPT-OSS: biases, K 2880 = 22.5 chunks):
    against the reference as the serving path is checked, and the same bits on a second call."""
    name, w, ws = model
    x, ids, tw = make_routing(name, m, seed=7)
    cfg, _ = variant_cfg(pick_config(w, m, ids.shape[1]), SWEEP_VARIANTS[variant])  # w4a4: a_qdq (the rows set it)
    plan = make_plan(ws, config=cfg)
    assert plan.launches["forced"].ws is not None, plan
    out = fused_moe_mxfp4(x, ws, ids, tw, plan)
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, reference(x, w, ids, tw)) < (2e-2 if w.a4 else 1e-2), f"{name} M={m} {variant}"
    assert torch.equal(out, fused_moe_mxfp4(x, ws, ids, tw, plan))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
@pytest.mark.parametrize("variant", WS_PREFILL)
@pytest.mark.parametrize("m", [300, 4096, 8192])
def test_ws_engine_prefill_rows_match_reference(model, variant, m):
    """The prefill rows of the warp-specialized GEMMs (64- and 128-slot blocks; GPT-OSS's w4a16 experts, DeepSeek's
    w4a4 as a_qdq) where the sweep times them (M 4096, 8192) and at M 300 (most blocks part-filled): the ws kernels
    run (not the Triton fallback), match the reference, and give the same bits twice."""
    name, w, ws = model
    var = SWEEP_VARIANTS[variant]
    if var["fmt"] != w.fmt:
        pytest.skip(f"{variant}: a {var['fmt']} row")
    x, ids, tw = make_routing(name, m, seed=13)
    cfg, _ = variant_cfg(pick_config(w, m, ids.shape[1]), var)
    plan = make_plan(ws, config=cfg)
    assert plan.launches["forced"].ws is not None, plan
    out = fused_moe_mxfp4(x, ws, ids, tw, plan)
    assert rel_err(out, reference(x, w, ids, tw)) < 1e-2, f"{name} M={m} {variant}"
    assert torch.equal(out, fused_moe_mxfp4(x, ws, ids, tw, plan))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
@pytest.mark.parametrize("m", [16, 64])
def test_ws_engine_is_bit_for_bit_the_triton_kernels(model, m):
    """Same tiles, GEMM1 unsplit, K steps in the same order: the warp-specialized kernels give the Triton kernels'
    bits (both multiply the same bf16 values with the same wgmma chains; h's re-quantization is the reference
    rule in both)."""
    name, w, ws = model
    x, ids, tw = make_routing(name, m, seed=9)
    base = pick_config(w, m, ids.shape[1]).replace(split1=1, group2=1, BLOCK_N1=64, BLOCK_N2=64, BLOCK_K1=128,
                                                   BLOCK_K2=128, pdl=False)  # fmt: skip
    if w.a4:
        base = base.replace(a_qdq=True)
    ours = fused_moe_mxfp4(x, ws, ids, tw, make_plan(ws, config=base.replace(engine="gluon_ws")))
    assert torch.equal(ours, fused_moe_mxfp4(x, ws, ids, tw, make_plan(ws, config=base)))


@pytest.mark.skipif(bool(torch.version.hip), reason="gluon_ws is the sm90 kernel")
def test_ws_engine_graph_replay_follows_new_routing(model):
    """A CUDA graph of the persistent kernels (the item count read on the device from the sort): new routing and
    inputs, replayed, match the reference; split-K counters left for the next replay."""
    name, w, ws = model
    x, ids, tw = make_routing(name, 4, seed=11)
    cfg, _ = variant_cfg(pick_config(w, 4, ids.shape[1]), SWEEP_VARIANTS["ws"])
    plan = make_plan(ws, config=cfg)
    fused_moe_mxfp4(x, ws, ids, tw, plan)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe_mxfp4(x, ws, ids, tw, plan)
    for seed in (1, 2):
        x2, ids2, tw2 = make_routing(name, 4, seed=20 + seed)
        x.copy_(x2), ids.copy_(ids2), tw.copy_(tw2)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, reference(x, w, ids, tw)) < (2e-2 if w.a4 else 1e-2), (name, seed)


@pytest.mark.parametrize("m,skew", [(1, False), (32, False), (128, False), (1000, False), (512, True)])
def test_sort_at_deepseek_sizes(m, skew):
    """The expert sort on the GPU at the DeepSeek shard's routing (E 257, top-9), single-CTA (M <= 910) and
    three-kernel paths (M 1000: 9000 slots), and a skewed batch (every token's first choice expert 0): every
    routed slot once, each block one expert's, blocks padded to BLOCK_M, -1 and the sentinel past the end."""
    from speedrun.overlays.mxfp4_moe import sort

    e, bm = 257, 16
    _, ids, _ = make_routing("dsr1_tp8", m, seed=11)
    if skew:
        ids[:, 0] = 0
    s = sort.sort_tokens(ids, e, bm)
    flat = ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=e)
    npad = int(s.num_padded)
    assert npad == int(((counts + bm - 1) // bm * bm).sum())
    body = s.sorted_ids[:npad].long()
    real = body[body < flat.numel()]
    assert torch.equal(real.sort().values, torch.arange(flat.numel(), device=real.device))
    blocks = s.expert_ids[: npad // bm].long()
    assert (blocks >= 0).all() and (blocks[1:] >= blocks[:-1]).all()  # expert order, every block used
    owner = torch.where(body < flat.numel(), flat[body.clamp_max(flat.numel() - 1)], blocks.repeat_interleave(bm))
    assert torch.equal(owner, blocks.repeat_interleave(bm))
    assert (s.expert_ids[npad // bm :] == -1).all() and (s.sorted_ids[npad:] == flat.numel()).all()


@pytest.mark.parametrize("m", [1, 32, 128])
@pytest.mark.parametrize("knobs", [{"a_qdq": True}, {"a_qdq": True, "b_regs": True}, {"a_scale_words": True}])
def test_activation_knobs_are_bit_identical_on_the_gpu(m, knobs):
    """a_qdq (w4a4 activations as bf16 on the MXFP4 grid: decoded once per row, with or without b_regs) and
    a_scale_words (the codes path's scales loaded as int32 words) multiply the values the shipped codes path
    decodes, with the same wgmmas: the DeepSeek shard's output bit for bit at the served buckets' tiles (split-K
    at M 1, GEMM2 tile groups at M 32)."""
    w = swizzled(make_weights("dsr1_tp8"))
    x, ids, tw = make_routing("dsr1_tp8", m, seed=7)
    cfg = pick_config(w, m, ids.shape[1])
    want = run(x, w, ids, tw, cfg=cfg)
    got = run(x, w, ids, tw, cfg=cfg.replace(**knobs))
    assert torch.equal(got, want)


@pytest.mark.parametrize("layout", ["swzg16", "swzg64"])
@pytest.mark.parametrize("m", [1, 32, 128, 4096, 8192])
def test_row_groups_are_bit_identical_on_the_gpu(model, layout, m):
    """Experts with swz128 rows in groups (mx.layout group_rows) through the served plan: the output equals the
    row-major layout's bit for bit at every served bucket, DeepSeek's w4a8 path (M 4096) and the large-M stock FP8
    route (M 8192: the grouped experts converted to FP8) included."""
    from speedrun.eval.kernels.stock import stock_config

    stock_config()  # outside a server: stock's fused-MoE config lookup reads the published (default) server args
    name, w, _ = model
    rowmajor, grouped = swizzled(w), swizzled(w, layout=Layout(layout))
    x, ids, tw = make_routing(name, m, seed=9)
    want = fused_moe(x, rowmajor, ids, tw, make_plan(rowmajor))
    assert torch.equal(fused_moe(x, grouped, ids, tw, make_plan(grouped)), want)
