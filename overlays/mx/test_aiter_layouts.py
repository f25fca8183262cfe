"""aiter's weight/scale layouts (overlays/mx/aiter_layouts.py) against aiter's documented definitions, step by step
on the CPU, and the gemm_a4w4 route that feeds them to a stand-in with aiter's documented contract."""

from __future__ import annotations

import pytest
import torch

from speedrun.overlays.mx import aiter_layouts as al


def documented_shuffle_weight(x: torch.Tensor) -> torch.Tensor:
    """aiter.ops.shuffle.shuffle_weight(x, layout=(16, 16)) as documented: BN=16, BK=32, K=16 // element size."""
    k = 16 // x.element_size()
    v = x.view(-1, x.shape[-2] // 16, 16, x.shape[-1] // 32, 32 // k, k)
    return v.permute(0, 1, 3, 4, 2, 5).contiguous().view(*x.shape)


def documented_e8m0_shuffle(s: torch.Tensor) -> torch.Tensor:
    """aiter.utility.fp4_utils.e8m0_shuffle as documented: pad to (256, 8), view(m//32, 2, 16, n//8, 2, 4),
    permute(0, 3, 5, 2, 4, 1)."""
    m, n = s.shape
    sm, sn = -(-m // 256) * 256, -(-n // 8) * 8
    p = torch.zeros(sm, sn, dtype=s.dtype)
    p[:m, :n] = s
    return p.view(sm // 32, 2, 16, sn // 8, 2, 4).permute(0, 3, 5, 2, 4, 1).contiguous().view(sm, sn)


@pytest.mark.parametrize("shape", [(16, 32), (48, 96), (3, 32, 64), (2, 512, 3584)])
def test_shuffle_weight_matches_definition(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    ours = al.shuffle_weight(w)
    assert torch.equal(ours, documented_shuffle_weight(w))
    assert torch.equal(al.unshuffle_weight(ours), w)
    # Each 16-byte run is 16 consecutive K bytes of one row; 16 runs cover the 16 rows of a tile.
    assert torch.equal(ours.reshape(-1, 16)[1], w.reshape(-1, shape[-1])[1, :16])


@pytest.mark.parametrize("shape", [(256, 8), (512, 224), (300, 13), (257 * 512, 8)])
def test_e8m0_shuffle_matches_definition(shape):
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    ours = al.e8m0_shuffle(s)
    assert torch.equal(ours, documented_e8m0_shuffle(s))
    assert torch.equal(al.e8m0_unshuffle(ours, *shape), s)


def test_moe_scale_shapes_of_the_finals():
    # DeepSeek-R1 MXFP4, TP8 shard: 257 experts (256 + fused shared), I = 2048 / 8, H = 7168.
    assert al.moe_scales_keep_shape(257, 2 * 256, 7168 // 32)  # w13 scales [E, 2I, H/32]
    assert al.moe_scales_keep_shape(257, 7168, 256 // 32)  # w2 scales [E, H, I/32]
    assert not al.moe_scales_keep_shape(3, 16, 8)


def test_mla_page1_layout_reproduces_token_gather():
    from speedrun.overlays.mla_decode.reference import mla_decode_reference

    g = torch.Generator().manual_seed(2)
    slots, bs, heads = 64, 3, 16
    kv = torch.randn(slots, 1, 576, generator=g).to(torch.bfloat16)
    lens = [5, 0, 11]
    kv_indptr = torch.tensor([0, 5, 5, 16], dtype=torch.int32)
    kv_indices = torch.randperm(slots, generator=g)[:16].to(torch.int32)
    pages, meta = al.mla_page1_view(kv), al.mla_page1_meta(bs)
    assert pages.shape == (slots, 1, 1, 576) and pages.data_ptr() == kv.data_ptr()
    assert meta["qo_indptr"].tolist() == [0, 1, 2, 3] and meta["kv_last_page_lens"].tolist() == [1, 1, 1]
    q = torch.randn(bs, heads, 576, generator=g).to(torch.bfloat16)
    ref = mla_decode_reference(q, kv, kv_indptr, kv_indices, 0.07)
    for b in range(bs):
        rows = al.paged_tokens(pages, kv_indptr, kv_indices, meta["kv_last_page_lens"], b).float()
        assert rows.shape[0] == lens[b]
        assert torch.equal(rows, kv[kv_indices[kv_indptr[b] : kv_indptr[b + 1]].long(), 0].float())
        if lens[b]:
            p = torch.softmax(q[b].float() @ rows.T * 0.07, -1)
            torch.testing.assert_close(p @ rows[:, :512], ref[b], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(256, 8), (300, 12), (7, 224)])
def test_graph_safe_shuffle_views_equal_the_index_forms(shape):
    g = torch.Generator().manual_seed(5)
    s = torch.randint(0, 255, shape, dtype=torch.uint8, generator=g)
    assert torch.equal(al.e8m0_shuffle_view(s), al.e8m0_shuffle(s))
    w = torch.randint(0, 255, (2, 64, 128), dtype=torch.uint8, generator=g)
    assert torch.equal(al.shuffle_weight_view(w), al.shuffle_weight(w))


def test_gemm_a4w4_route_feeds_aiter_the_documented_layouts(monkeypatch):
    """aiter cannot run here: a stand-in `aiter.ops.gemm_op_a4w4.gemm_a4w4` implements the documented contract
    (B = shuffle_weight(W), B_scale / A_scale = e8m0_shuffle(...) padded, out [M_pad, N]) by undoing the shuffles
    with our index forms and multiplying; our route must then equal the reference GEMM on every row."""
    import sys
    import types

    from speedrun.overlays.mx.format import dequant_mxfp4
    from speedrun.overlays.mxfp4_gemm import aiter_backend
    from speedrun.overlays.mxfp4_gemm import sglang_hook as hook
    from speedrun.overlays.mxfp4_gemm.reference import mxfp4_gemm_ref, random_mxfp4_weight

    calls = []

    def gemm_a4w4(a, b, a_scale, b_scale, out, bias=None, alpha=1.0, beta=0.0, bpreshuffle=True):
        n, k2 = b.shape
        assert bpreshuffle and a.shape[0] == a_scale.shape[0] == out.shape[0] and a.shape[0] % 256 == 0
        w = al.unshuffle_weight(b)
        ws = al.e8m0_unshuffle(b_scale, n, k2 // 16)
        as_ = al.e8m0_unshuffle(a_scale, a.shape[0], k2 // 16)
        out.copy_((dequant_mxfp4(a, as_) @ dequant_mxfp4(w, ws).t()).to(out.dtype))
        calls.append(a.shape[0])
        return out

    mod = types.ModuleType("aiter.ops.gemm_op_a4w4")
    mod.gemm_a4w4 = gemm_a4w4
    for name in ("aiter", "aiter.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "aiter.ops.gemm_op_a4w4", mod)
    monkeypatch.setattr(torch.version, "hip", "6.4")
    monkeypatch.setattr(hook, "require_aiter", lambda op: None)
    monkeypatch.setattr(aiter_backend, "require_aiter", lambda op: None)
    monkeypatch.setenv("SPEEDRUN_MXFP4_GEMM_BACKEND", "aiter")

    w, ws = random_mxfp4_weight(64, 256, seed=3)
    layer = types.SimpleNamespace(weight=torch.nn.Parameter(w, requires_grad=False),
                                  weight_scale=torch.nn.Parameter(ws, requires_grad=False))  # fmt: skip
    hook.process_weights(lambda self, lyr: None, None, layer)
    assert torch.equal(al.unshuffle_weight(layer.speedrun_aiter_w), w)  # plain copies stay for other readers
    x = torch.randn(5, 256).to(torch.bfloat16)
    y = hook.apply_weights(lambda *a: 1 / 0, types.SimpleNamespace(out_dtype=torch.bfloat16), layer, x)
    assert calls == [256] and torch.equal(y, mxfp4_gemm_ref(x, w, ws))
