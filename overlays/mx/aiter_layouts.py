"""torch versions of the layouts aiter's ROCm kernels take, written from aiter's documented definitions as
index maps (test_aiter_layouts.py checks them against those definitions step by step, on the CPU).

Which overlay aiter path relies on which layout (read from the op folders; aiter never ran here):
- mxfp4_moe, backend aiter: our hook hands the layer to stock SGLang 0.5.17, whose QuarkW4A4MXFp4MoE
  .process_weights_after_loading prepares fused_moe (QuantType.per_1x32) itself: `e8m0_shuffle` on the
  [E * 2I, H/32] and [E * H, I/32] scale matrices, and on gfx950 `shuffle_weight(w, (16, 16))` on the packed
  uint8 experts. (backend triton: our hook skips that step, so our kernels read unshuffled weights.)
- mxfp4_gemm, backend aiter, kernel a4w4 (default): `gemm_a4w4` with `shuffle_weight_view` + `e8m0_shuffle_view`
  on W and its scales once at load, and `e8m0_shuffle_view` on A's scales per call (pad + permute: graph safe);
  kernel afp4wfp4: aiter's Triton gemm_afp4wfp4 on the plain layouts (w [N, K/2] uint8 packed E2M1 low nibble
  first, w_scale [N, K/32] E8M0), as stock SGLang calls it.
- mla_decode, backend aiter: mla_decode_fwd on the KV pool viewed as pages of one token
  [slots, page=1, kv_heads=1, 576], kv_indptr/kv_indices as SGLang's Triton backend builds them (token
  slots), qo_indptr = arange(bs + 1), kv_last_page_lens = 1: `mla_page1_view` / `mla_page1_meta` here.
"""

from __future__ import annotations

import torch


def _ceil(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def shuffle_weight_index(rows: int, cols: int) -> torch.Tensor:
    """Destination offset of every byte of a [rows, cols] uint8 matrix under aiter's shuffle_weight((16, 16)):
    16-row x 32-byte tiles, laid out tile by tile (row tiles outer), each tile as two 16-byte K halves, each half
    as 16 rows of 16 contiguous bytes (what one MFMA lane group loads for the B operand)."""
    assert rows % 16 == 0 and cols % 32 == 0, f"shuffle_weight needs rows % 16 and cols % 32: {rows}x{cols}"
    n = torch.arange(rows).view(-1, 1)
    k = torch.arange(cols).view(1, -1)
    tile = (n // 16) * (cols // 32) + k // 32
    return ((tile * 2 + (k % 32) // 16) * 16 + n % 16) * 16 + k % 16


def shuffle_weight(w: torch.Tensor) -> torch.Tensor:
    """aiter.ops.shuffle.shuffle_weight(w, layout=(16, 16)) for 1-byte elements (packed MXFP4, fp8), applied
    to the last two dims of `w` ([..., N, K/2]); same shape."""
    *lead, rows, cols = w.shape
    flat = w.reshape(-1, rows * cols)
    out = torch.empty_like(flat)
    out[:, shuffle_weight_index(rows, cols).view(-1)] = flat
    return out.view(w.shape)


def unshuffle_weight(w: torch.Tensor) -> torch.Tensor:
    *lead, rows, cols = w.shape
    flat = w.reshape(-1, rows * cols)
    return flat[:, shuffle_weight_index(rows, cols).view(-1)].view(w.shape)


def e8m0_shuffle_index(rows: int, cols: int) -> torch.Tensor:
    """Destination offset of every scale of a [rows, cols] matrix, already padded to (256, 8) multiples, under
    aiter's e8m0_shuffle: row r = 32*r0 + 16*r1 + r2, column c = 8*c0 + 4*c1 + c2 is stored at
    (r0, c0, c2, r2, c1, r1) in row-major order (4 bytes of a dword = 4 K-groups of one row pair split)."""
    assert rows % 256 == 0 and cols % 8 == 0, f"pad first: {rows}x{cols}"
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    r0, r1, r2 = r // 32, (r % 32) // 16, r % 16
    c0, c1, c2 = c // 8, (c % 8) // 4, c % 4
    return ((((r0 * (cols // 8) + c0) * 4 + c2) * 16 + r2) * 2 + c1) * 2 + r1


def e8m0_shuffle(scale: torch.Tensor, pad_value: int = 0) -> torch.Tensor:
    """aiter.utility.fp4_utils.e8m0_shuffle of a 2-D uint8 scale matrix: pad rows to a multiple of 256 and
    columns to a multiple of 8, then shuffle; returns the padded shape, as aiter does. (aiter's padding value
    has varied between versions: uninitialized/0, and 0x7F in shuffle_scale; the padding is never read.)"""
    rows, cols = scale.shape
    sm, sn = _ceil(rows, 256), _ceil(cols, 8)
    padded = torch.full((sm, sn), pad_value, dtype=scale.dtype)
    padded[:rows, :cols] = scale
    out = torch.empty(sm * sn, dtype=scale.dtype)
    out[e8m0_shuffle_index(sm, sn).view(-1)] = padded.view(-1)
    return out.view(sm, sn)


def e8m0_unshuffle(shuffled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    sm, sn = shuffled.shape
    return shuffled.reshape(-1)[e8m0_shuffle_index(sm, sn).view(-1)].view(sm, sn)[:rows, :cols]


def shuffle_weight_view(w: torch.Tensor) -> torch.Tensor:
    """shuffle_weight as one view/permute/copy on w's device (load time, any device): equal to `shuffle_weight`."""
    *lead, rows, cols = w.shape
    v = w.reshape(-1, rows // 16, 16, cols // 32, 2, 16)
    return v.permute(0, 1, 3, 4, 2, 5).contiguous().view(w.shape)


def e8m0_shuffle_view(scale: torch.Tensor) -> torch.Tensor:
    """e8m0_shuffle as pad + view/permute on scale's device, no index tensors and no host sync, so it can run
    per call on activation scales inside a CUDA/HIP graph; equal to `e8m0_shuffle` (tested)."""
    rows, cols = scale.shape
    sm, sn = _ceil(rows, 256), _ceil(cols, 8)
    padded = torch.nn.functional.pad(scale, (0, sn - cols, 0, sm - rows))
    return padded.view(sm // 32, 2, 16, sn // 8, 2, 4).permute(0, 3, 5, 2, 4, 1).contiguous().view(sm, sn)


def moe_scales_keep_shape(experts: int, rows_per_expert: int, groups: int) -> bool:
    """SGLang views the shuffled [E * rows, K/32] scales back as [E, rows, -1]: only sound when no padding was
    added, i.e. E * rows % 256 == 0 and K/32 % 8 == 0."""
    return (experts * rows_per_expert) % 256 == 0 and groups % 8 == 0


def mla_page1_view(kv: torch.Tensor) -> torch.Tensor:
    """SGLang's [slots, 1, 576] latent KV pool as aiter's paged layout with one-token pages
    [pages = slots, page_size = 1, kv_heads = 1, 576] (a view: no copy)."""
    return kv.view(-1, 1, 1, kv.shape[-1])


def mla_page1_meta(bs: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Decode metadata for one-token pages: one query per sequence, every last page full (length 1)."""
    return {"qo_indptr": torch.arange(bs + 1, dtype=torch.int32, device=device),
            "kv_last_page_lens": torch.ones(bs, dtype=torch.int32, device=device)}  # fmt: skip


def paged_tokens(kv_pages: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
                 last_page_lens: torch.Tensor, b: int) -> torch.Tensor:  # fmt: skip
    """The token rows of sequence b under aiter's paged-KV convention ([pages, page_size, heads, dim]; pages
    kv_indices[kv_indptr[b]:kv_indptr[b+1]], all full except the last, which holds last_page_lens[b] tokens)."""
    pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])].long()
    if pages.numel() == 0:
        return kv_pages.new_zeros(0, kv_pages.shape[-1])
    rows = kv_pages[pages, :, 0]  # [n_pages, page_size, dim]
    keep = (pages.numel() - 1) * kv_pages.shape[1] + int(last_page_lens[b])
    return rows.reshape(-1, kv_pages.shape[-1])[:keep]
