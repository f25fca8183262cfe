"""GPU tests: the Triton MoE against the torch reference at the finals' real shapes, CUDA-graph capture, and the
triton_kernels routing conversion. Run: python -m pytest -m gpu overlays/mxfp4_moe -x -q"""

from __future__ import annotations

import pytest
import torch

from speedrun.overlays.mxfp4_moe.bench import SWEEP_VARIANTS
from speedrun.overlays.mxfp4_moe.moe import ACT_SILU, ACT_SWIGLU_OAI, MoeWeights, fused_moe_mxfp4, pick_config
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


def make_weights(model: str, seed: int = 0) -> MoeWeights:
    """Random MXFP4 experts; E8M0 scales near 2**-6 so activations stay O(1) through both GEMMs."""
    e, _, h, n, a4 = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(seed)
    u8 = lambda *s, lo=0, hi=256: torch.randint(lo, hi, s, generator=g, device="cuda", dtype=torch.uint8)
    w = MoeWeights(u8(e, 2 * n, h // 2), u8(e, 2 * n, h // 32, lo=118, hi=122), u8(e, h, n // 2),
                   u8(e, h, n // 32, lo=118, hi=122), a4=a4, act=ACT_SILU if a4 else ACT_SWIGLU_OAI)  # fmt: skip
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


def reference(x, w: MoeWeights, ids, tw, rsf: float = 1.0) -> torch.Tensor:
    return moe_reference(x, w.w13, w.w13_scale, w.w2, w.w2_scale, ids, tw, b13=w.b13, b2=w.b2, a4=w.a4, act=w.act,
                         alpha=w.alpha, limit=w.limit, routed_scaling_factor=rsf)  # fmt: skip


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-6)).item()


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return request.param, make_weights(request.param)


@pytest.mark.parametrize("m,dot_scaled", [(m, "config") for m in MS] + [(m, "flipped") for m in (1, 64, 4096)])
def test_matches_reference_at_real_shapes(model, m, dot_scaled):
    """Both MMA paths: register dequant + tl.dot, and tl.dot_scaled (Triton's own upcast on sm90)."""
    name, w = model
    x, ids, tw = make_routing(name, m)
    rsf = 2.5 if w.a4 else 1.0
    cfg = dict(pick_config(w, m, ids.shape[1]))
    if dot_scaled == "flipped":
        cfg["dot_scaled"] = not cfg.get("dot_scaled", False)
    out = fused_moe_mxfp4(x, w, ids, tw, rsf, cfg=cfg)
    ref = reference(x, w, ids, tw, rsf)
    # w4a4: a 1-ulp bf16 difference in the GEMM1 output can flip an MXFP4 code of the re-quantized activation.
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) < (2e-2 if w.a4 else 1e-2), f"{name} M={m}: rel err {rel_err(out, ref):.4f}"


def test_ep_filtered_slots_contribute_nothing(model):
    name, w = model
    x, ids, tw = make_routing(name, 64)
    ids[:, 1::2] = -1
    assert rel_err(fused_moe_mxfp4(x, w, ids, tw), reference(x, w, ids, tw)) < (2e-2 if w.a4 else 1e-2)


def test_cuda_graph_replay_follows_new_routing(model):
    name, w = model
    x, ids, tw = make_routing(name, 8)
    fused_moe_mxfp4(x, w, ids, tw)  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fused_moe_mxfp4(x, w, ids, tw)
    torch.cuda.current_stream().wait_stream(stream)
    x2, ids2, tw2 = make_routing(name, 8, seed=7)
    x.copy_(x2)
    ids.copy_(ids2)
    tw.copy_(tw2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fused_moe_mxfp4(x, w, ids, tw)) or rel_err(out, reference(x, w, ids, tw)) < 2e-2


def test_triton_kernels_routing_conversion():
    tk_routing = pytest.importorskip("sglang.srt.layers.moe.topk").__dict__.get("routing")
    if tk_routing is None:
        pytest.skip("triton_kernels routing not importable")
    from speedrun.overlays.mxfp4_moe.hook import _triton_kernels_to_standard

    logits = torch.randn(33, 128, device="cuda")
    routing, gather, scatter = tk_routing(logits, 4, sm_first=False)
    tw, ids = _triton_kernels_to_standard((routing, gather, scatter), 33)
    want_w, want_ids = torch.softmax(logits.topk(4, dim=1).values, -1), logits.topk(4, dim=1).indices
    order_got, order_want = ids.long().sort(1), want_ids.sort(1)
    assert torch.equal(order_got.values, order_want.values)
    assert torch.allclose(tw.gather(1, order_got.indices), want_w.gather(1, order_want.indices), atol=1e-2)


@pytest.mark.parametrize("variant", list(SWEEP_VARIANTS))
@pytest.mark.parametrize("m", [1, 128])
def test_every_sweep_variant_matches_reference(model, m, variant):
    """Each config variant the bench sweeps (swap, fast decode, dot_scaled, tiles) is checked here first."""
    name, w = model
    x, ids, tw = make_routing(name, m, seed=5)
    cfg = {**pick_config(w, m, ids.shape[1]), **SWEEP_VARIANTS[variant]}
    out = fused_moe_mxfp4(x, w, ids, tw, cfg=cfg)
    ref = reference(x, w, ids, tw)
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) < (2e-2 if w.a4 else 1e-2), f"{name} M={m} {variant}: rel err {rel_err(out, ref):.4f}"
