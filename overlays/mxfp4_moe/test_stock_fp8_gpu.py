"""GPU tests of the large-M route at the DeepSeek-R1 TP8 shard's shape (E 257, top-9, H 7168, I 256): the sm90
conversion (inline-PTX swz128 decode) carries the experts exactly, and the dispatched layer at M 7320 / 8192 (stock
SGLang's FP8 block MoE) matches the torch reference. Needs sglang's GPU stack.
Run: python -m pytest -m gpu overlays/mxfp4_moe/test_stock_fp8_gpu.py -x -q"""

from __future__ import annotations

import pytest
import torch

from speedrun.eval.kernels.stock import fp8_block_dequant, stock_config
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mxfp4_moe import stock_fp8
from speedrun.overlays.mxfp4_moe.api import fused_moe, fused_moe_mxfp4, make_plan, swizzled
from speedrun.overlays.mxfp4_moe.reference import moe_reference
from speedrun.overlays.mxfp4_moe.test_mxfp4_moe_gpu import make_routing, make_weights, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

MODEL = "dsr1_tp8"


@pytest.fixture(scope="module")
def experts():
    w = make_weights(MODEL)
    return w, swizzled(w)


def test_sm90_conversion_carries_the_experts_exactly(experts):
    """E8M0 118..121 lies well inside the 14-binade window: every value exact, through the PTX decode."""
    w, ws = experts
    q13, s13, q2, s2 = stock_fp8.experts_fp8(ws, ws.hidden, asm=True)
    for e in (0, 128, 256):
        assert torch.equal(fp8_block_dequant(q13[e], s13[e]), dequant_mxfp4(w.w13[e], w.w13_scale[e]))
        assert torch.equal(fp8_block_dequant(q2[e], s2[e]), dequant_mxfp4(w.w2[e], w.w2_scale[e]))


@pytest.mark.parametrize("m", [4096, 8192])  # above the route threshold (tpe > 64: M > 1827)
def test_dispatched_layer_matches_reference(experts, m):
    """Stock's FP8 route quantizes activations to FP8 per 128 (w4a8): within 5e-2 of the bf16-activation reference
    (e4m3 rounds each activation by up to 2**-4; two quantized GEMMs), and closer to it than our w4a4 kernels."""
    stock_config()  # outside a server: stock's fused-MoE config lookup reads the published (default) server args
    w, ws = experts
    plan = make_plan(ws)
    x, ids, tw = make_routing(MODEL, m)
    assert plan.launch(m, ids.shape[1]).stock_fp8
    out = fused_moe(x, ws, ids, tw, plan, 2.5)
    ref = moe_reference(x, w.w13, w.w13_scale, w.w2, w.w2_scale, ids, tw, a4=False, routed_scaling_factor=2.5)
    ours = fused_moe_mxfp4(x, ws, ids, tw, plan, 2.5)
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) < 5e-2, f"M={m}: rel err {rel_err(out, ref):.4f}"
    assert rel_err(out, ref) < rel_err(ours, ref)


def test_resident_experts_serve_the_route_bit_for_bit(experts):
    """Setting mxfp4_moe_stock_fp8 resident (the hook's load-time path): the layer keeps its own FP8 experts and the
    route's output is the per-call conversion's, bit for bit, at M 8192."""
    from speedrun.overlays import environ
    from speedrun.overlays.mxfp4_moe import sglang_hook

    stock_config()
    _, ws = experts
    plan = make_plan(ws)
    x, ids, tw = make_routing(MODEL, 8192)
    per_call = fused_moe(x, ws, ids, tw, plan, 2.5)
    environ.load({"SPEEDRUN_MXFP4_MOE_STOCK_FP8": "resident"})
    try:
        kept = sglang_hook._stock_fp8_experts(ws)
    finally:
        environ.reset()
    scratch = stock_fp8.experts_fp8(ws, ws.hidden, asm=True)[0].untyped_storage().data_ptr()  # ws: per call
    assert kept.fp8 is not None and kept.fp8[0].untyped_storage().data_ptr() != scratch
    assert torch.equal(fused_moe(x, kept, ids, tw, plan, 2.5), per_call)
