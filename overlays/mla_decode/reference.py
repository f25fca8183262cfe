"""Pure-torch (float32) absorbed-MLA decode: the numerics our kernel must match.

o[b, h] = softmax(sm_scale * k_scale * q[b, h] . K_b^T) @ (v_scale * V_b), with K_b the 576-wide latent
rows of sequence b (gathered through kv_indices[kv_indptr[b]:kv_indptr[b+1]]) and V_b their first 512.
Host-side loop over the batch: for tests and the `reference` backend (eager only, not CUDA-graph safe).
"""

from __future__ import annotations

import torch

from speedrun.overlays.mla_decode.kernel import D_LATENT, D_QK


def token_rows(kv: torch.Tensor, page_size: int = 1) -> torch.Tensor:
    """The KV pool as [slots, 576] rows addressed by token slot (3-D [N, 1, 576] or 4-D [pages, ps, 1, 576])."""
    if kv.dim() == 4:
        assert kv.shape[1] == page_size, f"4-D KV pool must have page_size={page_size} at dim 1"
    return kv.reshape(-1, kv.shape[-1])


def mla_decode_reference(
    q: torch.Tensor,
    kv: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    page_size: int = 1,
) -> torch.Tensor:
    """q [bs, H, 576]; kv pool (bf16 or fp8); returns o [bs, H, 512] in float32."""
    bs, heads, dim = q.shape
    assert dim == D_QK, f"q head dim {dim} != {D_QK}"
    rows = token_rows(kv, page_size)
    indptr = kv_indptr.tolist()
    out = torch.zeros(bs, heads, D_LATENT, dtype=torch.float32, device=q.device)
    for b in range(bs):
        idx = kv_indices[indptr[b] : indptr[b + 1]].long()
        if idx.numel() == 0:
            continue
        k = rows[idx].float()  # [n, 576]
        scores = (q[b].float() @ (k * k_scale).T) * sm_scale  # [H, n]
        out[b] = torch.softmax(scores, dim=-1) @ (k[:, :D_LATENT] * v_scale)
    return out
