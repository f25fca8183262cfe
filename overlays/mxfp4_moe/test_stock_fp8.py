"""CPU tests of the large-M route (stock_fp8.py): the MXFP4 -> FP8 block conversion kernel under the Triton
interpreter against the torch reference (dequant MXFP4 -> fp32 -> FP8 128x128 blocks with power-of-two scales,
eval's fp8_block_quant), exact inside the block-scale window and bounded outside it; the route's threshold, its
report line, and that ROCm / GPT-OSS never take it. The route itself runs on the GPU (test_stock_fp8_gpu.py)."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

if not torch.cuda.is_available():  # see test_mxfp4_moe.py: the interpreter only where there is no GPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from speedrun.eval.kernels.stock import fp8_block_dequant, fp8_block_quant
from speedrun.overlays import interpreter, report
from speedrun.overlays.mx.format import dequant_mxfp4
from speedrun.overlays.mx.layout import swizzle_experts
from speedrun.overlays.mxfp4_moe import api, stock_fp8
from speedrun.overlays.mxfp4_moe.api import Act, MoeWeights, fused_moe, fused_moe_mxfp4, make_plan
from speedrun.overlays.mxfp4_moe.config import Route
from speedrun.overlays.mxfp4_moe.sglang_hook import note_route

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter tests")


@pytest.fixture(autouse=True, scope="module")
def _interp():
    interpreter.patch()


def _mxfp4(e: int, rows: int, k: int, lo: int, hi: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (e, rows, k // 2), generator=g, dtype=torch.uint8)
    return w, torch.randint(lo, hi + 1, (e, rows, k // 32), generator=g, dtype=torch.uint8)


def _convert(w: torch.Tensor, s: torch.Tensor, k: int, swz: bool) -> tuple[torch.Tensor, torch.Tensor]:
    e, rows = w.shape[:2]
    if swz:
        w, s = swizzle_experts(w, s)
        w = w.view(torch.int32)
    q = torch.empty(e, rows, k, dtype=torch.float8_e4m3fn)
    qs = torch.empty(e, -(-rows // 128), -(-k // 128), dtype=torch.float32)
    stock_fp8.to_fp8(w, s, k, q, qs, asm=False)
    return q, qs


@pytest.mark.parametrize("swz", [False, True], ids=["plain", "swz128"])
@pytest.mark.parametrize("rows,k", [(256, 256), (192, 160)])  # partial row and K tiles (K padded to 128 by swz)
def test_conversion_is_exact_inside_the_window(swz, rows, k):
    """Block scales 2**-8..2**6 (E8M0 119..133: 14 binades): every value carried exactly, bitwise the reference."""
    w, s = _mxfp4(2, rows, k, 119, 133)
    q, qs = _convert(w, s, k, swz)
    truth = dequant_mxfp4(w, s)
    ref_q, ref_s = fp8_block_quant(truth)
    assert torch.equal(qs, ref_s) and torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
    assert torch.equal(fp8_block_dequant(q, qs), truth)


def _tile(small: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One 128x128 tile: a block holding code 6 at scale byte 127 (amax 6), every other block scale `small`, with
    codes 1 (0.5) and 3 (1.5): the tile's lowest bits."""
    w = torch.full((1, 128, 64), 0x31, dtype=torch.uint8)  # codes 1, 3
    s = torch.full((1, 128, 4), small, dtype=torch.uint8)
    w[0, 0, 0], s[0, 0, 0] = 0x77, 127  # codes 7, 7 (6.0) at 2**0
    return w, s


def test_window_edge_is_fourteen_binades():
    """scale_inv = 2**-6 here (amax 6): a block 14 binades down still lands on e4m3's 2**-9 grid, 15 down not."""
    w, s = _tile(127 - 14)
    q, qs = _convert(w, s, 128, swz=False)
    assert qs.item() == 2**-6 and torch.equal(fp8_block_dequant(q, qs), dequant_mxfp4(w, s))
    w, s = _tile(127 - 15)
    q, _ = _convert(w, s, 128, swz=False)
    assert not torch.equal(fp8_block_dequant(q, qs), dequant_mxfp4(w, s))


@pytest.mark.parametrize("swz", [False, True], ids=["plain", "swz128"])
def test_conversion_is_bounded_outside_the_window(swz):
    """Scales over 30 binades: the smallest blocks round on e4m3's subnormal grid, each value within scale_inv *
    2**-10 of the truth (half a step of 2**-9, RNE), bitwise what the torch reference rounds to."""
    w, s = _mxfp4(2, 256, 256, 100, 130, seed=1)
    q, qs = _convert(w, s, 256, swz)
    truth = dequant_mxfp4(w, s)
    ref_q, ref_s = fp8_block_quant(truth)
    assert torch.equal(qs, ref_s) and torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
    err = (fp8_block_dequant(q, qs) - truth).abs()
    bound = qs.repeat_interleave(128, 1).repeat_interleave(128, 2) * 2**-10
    assert err.max() > 0 and (err <= bound).all()


def test_all_zero_tile_gets_scale_one():
    q, qs = _convert(torch.zeros(1, 128, 64, dtype=torch.uint8), torch.full((1, 128, 4), 127, dtype=torch.uint8),
                     128, swz=False)  # fmt: skip
    assert qs.item() == 1.0 and not q.float().any()


@pytest.mark.parametrize("layout", ["swzg16", "swzg64"])
def test_conversion_reads_grouped_rows(layout):
    """Experts whose swz128 rows are grouped (mx.layout group_rows) convert to the same FP8 bytes as plain ones."""
    from speedrun.overlays.mxfp4_moe.api import swizzled
    from speedrun.overlays.mxfp4_moe.config import Layout

    e, n, h = 2, 64, 256
    w13, s13 = _mxfp4(e, 2 * n, h, 119, 125, seed=6)
    w2, s2 = _mxfp4(e, h, n, 119, 125, seed=7)
    w = MoeWeights(w13, s13, w2, s2, a4=True)
    got = [t.clone() for t in stock_fp8.experts_fp8(swizzled(w, layout=Layout(layout)), h, asm=False)]
    want = stock_fp8.experts_fp8(w, h, asm=False)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want, strict=True))


def test_experts_fp8_carves_one_scratch_for_both_stacks():
    """A layer's experts land in the device's one scratch (views into it), w2's rows cut to the hidden size."""
    e, n, h = 2, 64, 256
    w13, s13 = _mxfp4(e, 2 * n, h, 119, 125, seed=2)
    w2, s2 = _mxfp4(e, h, n, 119, 125, seed=3)
    w = MoeWeights(w13, s13, w2, s2, a4=True)
    q13, sc13, q2, sc2 = stock_fp8.experts_fp8(w, h, asm=False)
    buf = stock_fp8.SCRATCH.bufs[torch.device("cpu")]
    assert buf.numel() >= stock_fp8.fp8_bytes(e, 2 * n, h) + stock_fp8.fp8_bytes(e, h, n)
    assert all(t.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() for t in (q13, sc13, q2, sc2))
    assert torch.equal(fp8_block_dequant(q13, sc13), dequant_mxfp4(w13, s13))
    assert torch.equal(fp8_block_dequant(q2, sc2), dequant_mxfp4(w2, s2))


def test_resident_experts_are_the_scratch_conversion_in_their_own_buffer():
    """Setting mxfp4_moe_stock_fp8 resident: the layer's experts converted once at load into a buffer of their own
    (not the shared scratch), the same bytes as the per-call conversion; a layer holding them is served from them."""
    e, n, h = 2, 64, 256
    w13, s13 = _mxfp4(e, 2 * n, h, 119, 125, seed=4)
    w2, s2 = _mxfp4(e, h, n, 119, 125, seed=5)
    w = MoeWeights(w13, s13, w2, s2, a4=True)
    kept = stock_fp8.resident(w, h, asm=False)
    per_call = [t.clone() for t in stock_fp8.experts_fp8(w, h, asm=False)]
    scratch = stock_fp8.SCRATCH.bufs[torch.device("cpu")].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() != scratch for t in kept)
    assert all(torch.equal(a, b) for a, b in zip(kept, per_call, strict=True))
    assert kept[0].untyped_storage().nbytes() == stock_fp8.layer_bytes(w, h)
    served = stock_fp8.experts_fp8(replace(w, fp8=kept), h, asm=False)
    assert all(a is b for a, b in zip(served, kept, strict=True))


def test_scratch_grows_for_a_larger_layer_only():
    dev = torch.device("cpu")
    size = stock_fp8.SCRATCH.need.get(dev, 0) + (1 << 20)
    stock_fp8.SCRATCH.reserve(dev, size)
    first = stock_fp8.SCRATCH.bufs[dev]
    stock_fp8.SCRATCH.reserve(dev, 1 << 10)
    assert stock_fp8.SCRATCH.bufs[dev] is first
    stock_fp8.SCRATCH.reserve(dev, size + 1)
    assert stock_fp8.SCRATCH.bufs[dev].numel() == size + 1


def _deepseek_like(e: int = 257, a4: bool = True) -> MoeWeights:
    """Shapes only matter for the plan: E 257 as the DeepSeek shard (+ fused shared expert), tiny H and N."""
    w13, s13 = _mxfp4(e, 64, 128, 120, 124)
    w2, s2 = _mxfp4(e, 128, 32, 120, 124)
    return MoeWeights(w13, s13, w2, s2, a4=a4, act=Act.SILU if a4 else Act.SWIGLU_OAI)


def test_sm90_routes_large_m_to_stock_and_reports_it():
    """DeepSeek shard (E 257, top-9): M <= 1827 (tpe <= 64) ours, M > 1827 stock (round 11, H100, M 4096: the route
    2319.5 us, the w4a8 path 2994.9); the report says so once."""
    plan = make_plan(_deepseek_like(), arch="sm90")
    assert plan.stock and plan.stock_above(9) == 1827
    ms = (1, 128, 512, 1024, 1827, 1828, 4096, 7310, 7311, 16384)
    assert [plan.launch(m, 9).stock_fp8 for m in ms] == [False] * 5 + [True] * 5
    line = "w4a4 E=257 top-9: M <= 1827: speedrun MXFP4 kernels; M > 1827: stock FP8 block fused MoE"
    assert plan.route_line(9).startswith(line)
    note_route(plan, 9)
    note_route(plan, 9)
    assert report.snapshot()["mxfp4_moe_routes"].count(plan.route_line(9)) == 1


@pytest.mark.parametrize("arch", ["gfx950", "cpu"])
def test_rocm_and_the_interpreter_never_take_the_route(arch):
    """gfx950's large M is aiter's (stock's ROCm path), not stock's CUDA FP8 MoE; `cpu` is the interpreter."""
    plan = make_plan(_deepseek_like(), arch=arch)
    assert not plan.stock and plan.stock_above(9) is None and not plan.launch(4096, 9).stock_fp8
    assert not api.stock_route_ok(_deepseek_like(), arch)


def test_gptoss_never_takes_the_route():
    plan = make_plan(_deepseek_like(128, a4=False), arch="sm90")
    assert not plan.stock and "at every M" in plan.route_line(4)


def test_stock_buckets_must_come_last():
    w = _deepseek_like()
    table = api.table("sm90")
    keys = ["w4a4:tpe<=1", "w4a4:tpe>256"]
    launches = {k: api.resolve(table[k], False, False, "sm90", False) for k in keys}
    launches["w4a4:tpe<=1"] = api.replace(launches["w4a4:tpe<=1"], cfg=table["w4a4:tpe<=1"].replace(route="stock_fp8"))
    launches["w4a4:tpe>256"] = api.replace(launches["w4a4:tpe>256"], cfg=table["w4a4:tpe>256"].replace(route="ours"))
    with pytest.raises(ValueError, match="must come after every `ours` one"):
        api._routes(launches, keys, w, "sm90")
    assert table["w4a4:tpe>256"].route == Route.STOCK_FP8


def test_dispatch_below_the_threshold_is_ours():
    e, n, h, m, topk = 8, 64, 128, 8, 2  # tpe 2: the w4a4:tpe<=4 bucket
    w13, s13 = _mxfp4(e, 2 * n, h, 120, 124, seed=4)
    w2, s2 = _mxfp4(e, h, n, 120, 124, seed=5)
    w = MoeWeights(w13, s13, w2, s2, a4=True)
    plan = make_plan(w, arch="sm90")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(m, h, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=g)[:topk] for _ in range(m)]).int()
    tw = torch.rand(m, topk, generator=g)
    assert not plan.launch(m, topk).stock_fp8
    assert torch.equal(fused_moe(x, w, ids, tw, plan), fused_moe_mxfp4(x, w, ids, tw, plan))
