"""Routing-aware token sorting on the GPU, no host sync (CUDA-graph safe: every buffer is sized from M).

topk_ids [M, topk] -> `sorted_ids` (flat slot ids t*topk+k grouped by expert, each expert's run padded to a
multiple of BLOCK_M with the sentinel M*topk), `expert_ids` (expert of each BLOCK_M block, -1 past the end)
and `num_padded` (device scalar). Ids outside [0, E) (EP-filtered slots are -1) are dropped.

Phases (the kernels are in kernels.py): (1) rank of each slot inside its expert (atomic counter per expert);
(2) padded offsets (cumsum), block -> expert table, padding sentinels; (3) scatter slot ids to offset + rank.
Small inputs run all three in one CTA (one launch: decode); large ones use one kernel per phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from speedrun.overlays.mxfp4_moe.kernels import _align_small_kernel, _offsets_kernel, _rank_kernel, _scatter_kernel

SMALL_MAX = 8192  # slots handled by the single-CTA kernel
CHUNK = 1024


@dataclass
class Sorted:
    sorted_ids: torch.Tensor  # int32 [max_blocks * block_m]
    expert_ids: torch.Tensor  # int32 [max_blocks]
    num_padded: torch.Tensor  # int32 [1]
    max_blocks: int
    block_m: int
    ids: torch.Tensor  # the flat topk ids [M * topk] that were sorted


def max_blocks_for(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on BLOCK_M blocks: every non-empty expert adds at most one partial block."""
    return triton.cdiv(num_slots, block_m) + min(num_experts, num_slots)


def sort_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int, pdl: bool = False) -> Sorted:
    """Group the slots of `topk_ids` [M, topk] by expert (see module doc). No host sync. `pdl`: the one-CTA sort
    opens a PDL chain (a plain launch that lets the next kernel start beside it: overlays/pdl.py)."""
    ids = topk_ids.reshape(-1)
    num = ids.numel()
    max_blocks = max_blocks_for(num, num_experts, block_m)
    dev = ids.device
    # one allocation, sliced (fewer allocator calls per layer; the pieces are fully written before being read)
    # pieces start 256-byte aligned, as separate allocations would (the kernels' JIT specialization is unchanged)
    sizes = (num_experts, num_experts, max(num, 1), max_blocks * block_m, max_blocks, 1)
    padded = [-(-v // 64) * 64 for v in sizes]
    buf = torch.empty(sum(padded), dtype=torch.int32, device=dev)
    counts, offsets, rank, sorted_ids, expert_ids, npad = (
        p[:v] for p, v in zip(torch.split(buf, padded), sizes, strict=True)
    )
    e_pow2 = triton.next_power_of_2(num_experts)
    if num <= SMALL_MAX:
        _align_small_kernel[(1,)](ids, counts, rank, offsets, sorted_ids, expert_ids, npad, num, num_experts,
                                  max_blocks, BLOCK_M=block_m, E_POW2=e_pow2, CHUNK=CHUNK, BCHUNK=64, PDL=pdl,
                                  num_warps=8)  # fmt: skip
    else:
        counts.zero_()
        grid = (triton.cdiv(num, CHUNK),)
        _rank_kernel[grid](ids, counts, rank, num, num_experts, CHUNK=CHUNK, num_warps=4)
        _offsets_kernel[(1,)](counts, offsets, sorted_ids, expert_ids, npad, num, num_experts, max_blocks,
                              BLOCK_M=block_m, E_POW2=e_pow2, BCHUNK=64, num_warps=8)  # fmt: skip
        _scatter_kernel[grid](ids, rank, offsets, sorted_ids, num, num_experts, CHUNK=CHUNK, num_warps=4)
    return Sorted(sorted_ids, expert_ids, npad, max_blocks, block_m, ids)
