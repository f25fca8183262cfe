"""Host side of the MLA decode kernels: per-arch config, split plan, workspace, launches.

Everything here is CUDA-graph safe: the launch depends only on shapes (bs, heads) and the device's SM
count, never on sequence lengths (those are read on the device), and the workspace is either passed
in (sized once for the graph's max batch) or allocated with torch.empty (no sync).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from speedrun.overlays.arch import current_arch, is_amd, launch_options, load_configs, sm_count
from speedrun.overlays.hooks import Unsupported
from speedrun.overlays.mla_decode.kernel import D_LATENT, D_QK, D_ROPE, _mla_merge_kernel, _mla_partial_kernel

LOG2E = 1.4426950408889634
# SNAP reads the whole batch's lengths in every merge program (bs x heads of them): past this batch the merge
# traffic would grow as bs^2, while the flat split already cuts at most one sequence per program.
SNAP_MAX_BS = 512
MAX_BS = 8192  # the partial kernel loads kv_indptr[1:bs+1] as one vector to find its first sequence
KV_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e4m3fnuz)
Q_DTYPES = (torch.bfloat16, torch.float16)


def config_for(heads: int, arch: str | None = None) -> dict[str, Any]:
    """The first `heads<=N` bucket of the arch's table that holds `heads` (the largest one otherwise)."""
    arch = arch or current_arch()
    try:
        table = load_configs("mla_decode", arch)
    except FileNotFoundError:  # another AMD arch: the gfx950 table is the closest we have
        table = load_configs("mla_decode", "gfx950" if is_amd(arch) else "sm90")
    buckets = sorted((int(k.split("<=")[1]), v) for k, v in table.items() if k.startswith("heads<="))
    for limit, cfg in buckets:
        if heads <= limit:
            return cfg
    return buckets[-1][1]


FP8_KNOBS = ("BLOCK_N", "num_warps", "num_stages", "split_d", "fp8_cvt", "qk_chains")  # what cfg["fp8"] may override


def kv_config(cfg: dict[str, Any], kv_dtype: torch.dtype) -> dict[str, Any]:
    """The bucket's config for this KV dtype: fp8 caches take the kernel knobs of cfg["fp8"] (never the split
    width: programs_per_sm sizes the workspace the caller already holds)."""
    if kv_dtype.itemsize != 1 or "fp8" not in cfg:
        return cfg
    return {**cfg, **{k: v for k, v in cfg["fp8"].items() if k in FP8_KNOBS}}


def kernel_constexprs(cfg: dict[str, Any], q_dtype: torch.dtype, kv_dtype: torch.dtype, arch: str) -> dict:
    """SPLIT_D, CDT (MMA input dtype) and CVT_ASM for the partial kernel.
    fp8_cvt: "bf16" converts fp8 to q's dtype; "f16" computes in f16 (e4m3 -> f16 is exact; q gets a
    power-of-two guard); "asm" is "f16" with the packed sm89+ inline-asm convert (e4m3fn on CUDA only)."""
    cdt = tl.float16 if q_dtype == torch.float16 else tl.bfloat16
    cvt = cfg.get("fp8_cvt", "bf16") if kv_dtype.itemsize == 1 else "none"
    if cvt in ("f16", "asm"):
        cdt = tl.float16
    sm = int("".join(c for c in arch[2:] if c.isdigit()) or 0) if arch.startswith("sm") else 0
    asm = cvt == "asm" and kv_dtype == torch.float8_e4m3fn and sm >= 89
    return {
        "SPLIT_D": cfg.get("split_d", 1),
        "CDT": cdt,
        "CVT_ASM": asm,
        "QK_CHAINS": cfg.get("qk_chains", 1),
        **split_constexprs(cfg),
    }


def use_pdl(cfg: dict[str, Any], arch: str) -> bool:
    """pdl: launch the merge as a programmatic dependent of the partial kernel (sm90+; hides its launch)."""
    sm = int("".join(c for c in arch[2:] if c.isdigit()) or 0) if arch.startswith("sm") else 0
    return bool(cfg.get("pdl")) and sm >= 90


def block_b(bs: int) -> int:
    """The batch as one vector (the kernels find a chunk's first sequence and the longest one with it)."""
    return max(256, triton.next_power_of_2(bs))


def split_constexprs(cfg: dict[str, Any]) -> dict[str, Any]:
    """split "seq": sequence-aligned pieces of >= one chunk (align tokens); "flat" (default): equal cuts of the
    concatenated KV range. Both kernels must agree: the merge finds the partials from the same rule."""
    return {
        "SEQ_SPLIT": cfg.get("split", "flat") == "seq",
        "ALIGN": cfg.get("align", 64),
        "SNAP": bool(cfg.get("snap", False)),
    }


def block_h(heads: int, cfg: dict[str, Any]) -> int:
    # tl.dot wants M >= 16: fewer heads are padded (masked), more are split into head groups.
    return max(16, min(cfg["BLOCK_H"], triton.next_power_of_2(heads)))


def num_programs(heads: int, cfg: dict[str, Any], sms: int) -> int:
    """KV chunks per launch: `programs_per_sm` waves of the GPU, shared by the head groups of a chunk."""
    groups = math.ceil(heads / block_h(heads, cfg))
    return max(1, (cfg["programs_per_sm"] * sms) // groups)


def chunk_tokens(lens: list[int], programs: int, min_chunk: int, snap: bool = False) -> int:
    """Host mirror of the kernels' `_chunk_size` (tests and predictions only; the kernels compute it on the device)."""
    chunk = -(-max(-(-sum(lens) // programs), min_chunk) // 16) * 16
    if not snap:
        return chunk
    lmax = max(max(lens, default=1), 1)
    snapped = -(-lmax // max(lmax // chunk, 1)) if lmax >= chunk else -(-chunk // lmax) * lmax
    return snapped if snapped * 16 <= chunk * 17 else chunk


def seq_split_plan(lens: list[int], programs: int, min_chunk: int, align: int = 64, snap: bool = False) -> list:
    """Host mirror of the SEQ_SPLIT rule: per program, its (sequence, start, end) pieces (positions relative to
    the sequence)."""
    chunk = chunk_tokens(lens, programs, min_chunk, snap)
    plan: list[list[tuple]] = [[] for _ in range(programs)]
    start = 0
    for b, n in enumerate(lens):
        per = -(-n // max(n // chunk, 1))  # floor(n / chunk) equal pieces (at least one), rounded up to align
        piece = max(-(-per // align) * align, align)
        for lo in range(0, n, piece):
            plan[(start + lo) // chunk].append((b, lo, min(lo + piece, n)))
        start += n
    return plan


def merge_blocks(bs: int, heads: int, merge_cfg: dict[str, Any], sms: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_DV) of the merge: split the 512 output columns until there are ~4 programs per SM,
    so a lone long sequence (hundreds of partials) merges in parallel; cap the [P, DV] tile at 8K floats."""
    split = max(1, min(D_LATENT // merge_cfg["min_block_dv"], triton.next_power_of_2(-(-4 * sms // (bs * heads)))))
    block_dv = D_LATENT // split
    return min(merge_cfg["BLOCK_P"], 8192 // block_dv), block_dv


def workspace_rows(bs: int, programs: int) -> int:
    """Partial slots: segment (chunk p, sequence b) lives at p + b < programs + bs."""
    return programs + bs


def alloc_workspace(bs: int, heads: int, programs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = workspace_rows(bs, programs)
    return (
        torch.empty(rows * heads * D_LATENT, dtype=torch.float32, device=device),
        torch.empty(rows * heads, dtype=torch.float32, device=device),
    )


def check_shapes(q: torch.Tensor, kv: torch.Tensor, o: torch.Tensor, page_size: int) -> None:
    """Raise Unsupported for anything the kernel does not serve (the caller then runs stock SGLang)."""
    if q.dim() != 3 or q.shape[-1] != D_QK:
        raise Unsupported(f"q must be [bs, heads, {D_QK}], got {tuple(q.shape)}")
    if kv.shape[-1] != D_QK or kv.shape[-2] != 1 or kv.dim() not in (3, 4) or kv.stride(-1) != 1:
        raise Unsupported(f"KV pool must be [slots, 1, {D_QK}] or [pages, ps, 1, {D_QK}], got {tuple(kv.shape)}")
    if kv.dim() == 4 and kv.shape[1] != page_size:
        raise Unsupported(f"4-D KV pool dim 1 ({kv.shape[1]}) != page_size {page_size}")
    if o.shape != (q.shape[0], q.shape[1], D_LATENT) or o.stride(-1) != 1:
        raise Unsupported(f"o must be [bs, heads, {D_LATENT}] (unit stride), got {tuple(o.shape)}")
    if q.dtype not in Q_DTYPES or kv.dtype not in KV_DTYPES:
        raise Unsupported(f"dtypes q={q.dtype} kv={kv.dtype} not served")
    if q.stride(-1) != 1:
        raise Unsupported("q must have unit stride in its last dim")
    if q.shape[0] > MAX_BS:
        raise Unsupported(f"batch {q.shape[0]} > {MAX_BS}")


def kv_strides(kv: torch.Tensor, page_size: int) -> tuple[int, int]:
    """(page stride, token stride) in elements: token slot t lives at (t // ps) * page + (t % ps) * tok."""
    if kv.dim() == 4:
        return kv.stride(0), kv.stride(1)
    return kv.stride(0) * page_size, kv.stride(0)


def mla_decode(
    q: torch.Tensor,
    kv: torch.Tensor,
    o: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    *,
    page_size: int = 1,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: dict[str, Any] | None = None,
    programs: int | None = None,
    arch: str | None = None,
) -> torch.Tensor:
    """Absorbed-MLA decode into `o` [bs, H, 512]; q [bs, H, 576]; kv the latent pool; token-slot kv_indices."""
    check_shapes(q, kv, o, page_size)
    bs, heads, _ = q.shape
    if bs == 0:
        return o
    arch = arch or current_arch()
    cfg = kv_config(config or config_for(heads, arch), kv.dtype)
    if bs > SNAP_MAX_BS:  # a shape-only choice (graph safe); both kernels read the same cfg
        cfg = {**cfg, "snap": False}
    bh = block_h(heads, cfg)
    sms = sm_count(q.device)
    if programs is None:
        programs = num_programs(heads, cfg, sms)
    part_o, part_lse = workspace if workspace is not None else alloc_workspace(bs, heads, programs, q.device)
    rows = workspace_rows(bs, programs)
    if part_o.numel() < rows * heads * D_LATENT or part_lse.numel() < rows * heads:
        raise ValueError(f"workspace too small for bs={bs} heads={heads} programs={programs}")
    page_stride, tok_stride = kv_strides(kv, page_size)
    groups = math.ceil(heads / bh)
    opts = launch_options(cfg, arch) if not arch == "cpu" else {}
    # One program per sequence once the batch alone fills the GPU (per_seq_min_bs, a shape-only choice:
    # graph safe): no partials and no merge. Equal chunks otherwise (they balance mixed lengths).
    per_seq = bool(cfg.get("per_seq_min_bs")) and bs >= cfg["per_seq_min_bs"]
    pdl = use_pdl(cfg, arch) and not per_seq
    _mla_partial_kernel[((bs if per_seq else programs) * groups,)](
        q, kv, o, part_o, part_lse, kv_indptr, kv_indices,
        float(sm_scale) * float(k_scale) * LOG2E, float(v_scale), bs, programs,
        q.stride(0), q.stride(1), page_stride, tok_stride, o.stride(0), o.stride(1),
        H=heads, BLOCK_H=bh, BLOCK_N=cfg["BLOCK_N"], BLOCK_B=block_b(bs),
        MIN_CHUNK=cfg["min_chunk"], PAGE_SIZE=page_size, DL=D_LATENT, DR=D_ROPE,
        **kernel_constexprs(cfg, q.dtype, kv.dtype, arch), PER_SEQ=per_seq, PDL=pdl, **opts,
    )  # fmt: skip
    if per_seq:
        return o
    block_p, block_dv = merge_blocks(bs, heads, cfg["merge"], sms)
    mopts = launch_options(cfg["merge"], arch) if not arch == "cpu" else {}
    if pdl:
        mopts["launch_pdl"] = True
    _mla_merge_kernel[(bs, heads, D_LATENT // block_dv)](
        o, part_o, part_lse, kv_indptr, float(v_scale), bs, programs, o.stride(0), o.stride(1),
        H=heads, BLOCK_P=block_p, BLOCK_DV=block_dv, MIN_CHUNK=cfg["min_chunk"], DL=D_LATENT,
        BLOCK_B=block_b(bs), **split_constexprs(cfg), PDL=pdl, **mopts,
    )  # fmt: skip
    return o
