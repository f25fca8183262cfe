"""Routing-aware token sorting on the GPU, no host sync (CUDA-graph safe: every buffer is sized from M).

topk_ids [M, topk] -> `sorted_ids` (flat slot ids t*topk+k grouped by expert, each expert's run padded to a
multiple of BLOCK_M with the sentinel M*topk), `expert_ids` (expert of each BLOCK_M block, -1 past the end)
and `num_padded` (device scalar). Ids outside [0, E) (EP-filtered slots are -1) are dropped.

Phases: (1) rank of each slot inside its expert (atomic counter per expert); (2) padded offsets (cumsum),
block -> expert table, padding sentinels; (3) scatter slot ids to offset + rank. Small inputs run all three
in one CTA (one launch: decode); large ones use one kernel per phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SMALL_MAX = 8192  # slots handled by the single-CTA kernel
CHUNK = 1024


@triton.jit
def _rank_phase(ids_ptr, counts_ptr, rank_ptr, start, NUM, E, CHUNK: tl.constexpr):
    offs = start + tl.arange(0, CHUNK)
    e = tl.load(ids_ptr + offs, mask=offs < NUM, other=-1).to(tl.int32)
    ok = (offs < NUM) & (e >= 0) & (e < E)
    r = tl.atomic_add(counts_ptr + e, 1, mask=ok)
    tl.store(rank_ptr + offs, r, mask=ok)


@triton.jit
def _offsets_phase(
    counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, BCHUNK: tl.constexpr,
):  # fmt: skip
    offs_e = tl.arange(0, E_POW2)
    cnt = tl.load(counts_ptr + offs_e, mask=offs_e < E, other=0, cache_modifier=".cg")  # written by atomics
    padded = (cnt + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    tl.store(npad_ptr, total)
    tl.store(offsets_ptr + offs_e, starts, mask=offs_e < E)
    ends = tl.where(offs_e < E, ends, 2147483647)
    for b0 in range(0, max_blocks, BCHUNK):
        b = b0 + tl.arange(0, BCHUNK)
        ex = tl.sum((ends[None, :] <= b[:, None] * BLOCK_M).to(tl.int32), axis=1)
        tl.store(expert_ids_ptr + b, tl.where(b * BLOCK_M < total, ex, -1), mask=b < max_blocks)
    # Sentinel everywhere first (the scatter phase, which runs after, overwrites the real slots): one vector
    # pass, cheaper than per-expert padding tails.
    for p0 in range(0, max_blocks * BLOCK_M, BCHUNK * 16):
        p = p0 + tl.arange(0, BCHUNK * 16)
        tl.store(sorted_ptr + p, tl.full([BCHUNK * 16], NUM, tl.int32), mask=p < max_blocks * BLOCK_M)


@triton.jit
def _scatter_phase(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, start, NUM, E, CHUNK: tl.constexpr):
    offs = start + tl.arange(0, CHUNK)
    e = tl.load(ids_ptr + offs, mask=offs < NUM, other=-1).to(tl.int32)
    ok = (offs < NUM) & (e >= 0) & (e < E)
    r = tl.load(rank_ptr + offs, mask=ok, other=0, cache_modifier=".cg")
    base = tl.load(offsets_ptr + e, mask=ok, other=0, cache_modifier=".cg")
    tl.store(sorted_ptr + base + r, offs, mask=ok)


@triton.jit
def _align_small_kernel(
    ids_ptr, counts_ptr, rank_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, CHUNK: tl.constexpr, BCHUNK: tl.constexpr,
):  # fmt: skip
    offs_e = tl.arange(0, E_POW2)
    tl.store(counts_ptr + offs_e, tl.zeros([E_POW2], tl.int32), mask=offs_e < E)
    tl.debug_barrier()
    for start in range(0, NUM, CHUNK):
        _rank_phase(ids_ptr, counts_ptr, rank_ptr, start, NUM, E, CHUNK)
    tl.debug_barrier()
    _offsets_phase(counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
                   BLOCK_M, E_POW2, BCHUNK)  # fmt: skip
    tl.debug_barrier()
    for start in range(0, NUM, CHUNK):
        _scatter_phase(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, start, NUM, E, CHUNK)


@triton.jit
def _rank_kernel(ids_ptr, counts_ptr, rank_ptr, NUM, E, CHUNK: tl.constexpr):
    _rank_phase(ids_ptr, counts_ptr, rank_ptr, tl.program_id(0) * CHUNK, NUM, E, CHUNK)


@triton.jit
def _offsets_kernel(
    counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, BCHUNK: tl.constexpr,
):  # fmt: skip
    _offsets_phase(counts_ptr, offsets_ptr, sorted_ptr, expert_ids_ptr, npad_ptr, NUM, E, max_blocks,
                   BLOCK_M, E_POW2, BCHUNK)  # fmt: skip


@triton.jit
def _scatter_kernel(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, NUM, E, CHUNK: tl.constexpr):
    _scatter_phase(ids_ptr, rank_ptr, offsets_ptr, sorted_ptr, tl.program_id(0) * CHUNK, NUM, E, CHUNK)


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


def sort_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Sorted:
    """Group the slots of `topk_ids` [M, topk] by expert (see module doc). No host sync."""
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
                                  max_blocks, BLOCK_M=block_m, E_POW2=e_pow2, CHUNK=CHUNK, BCHUNK=64,
                                  num_warps=8)  # fmt: skip
    else:
        counts.zero_()
        grid = (triton.cdiv(num, CHUNK),)
        _rank_kernel[grid](ids, counts, rank, num, num_experts, CHUNK=CHUNK, num_warps=4)
        _offsets_kernel[(1,)](counts, offsets, sorted_ids, expert_ids, npad, num, num_experts, max_blocks,
                              BLOCK_M=block_m, E_POW2=e_pow2, BCHUNK=64, num_warps=8)  # fmt: skip
        _scatter_kernel[grid](ids, rank, offsets, sorted_ids, num, num_experts, CHUNK=CHUNK, num_warps=4)
    return Sorted(sorted_ids, expert_ids, npad, max_blocks, block_m, ids)
