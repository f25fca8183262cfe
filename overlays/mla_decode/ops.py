"""Host side of the MLA decode kernels: per-arch config, split plan, workspace, launches.

Everything here is CUDA-graph safe: the launch depends only on shapes (bs, heads) and the device's SM
count, never on sequence lengths (those are read on the device), and the workspace is either passed
in (sized once for the graph's max batch) or allocated with torch.empty (no sync).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, get_args

import torch
import triton
import triton.language as tl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
            return check_config(cfg, f"mla_decode {arch} heads<={limit}")
    return check_config(buckets[-1][1], f"mla_decode {arch} heads<={buckets[-1][0]}")


FP8_KNOBS = ("BLOCK_N", "num_warps", "num_stages", "split_d", "fp8_cvt", "qk_chains")  # what cfg["fp8"] may override
Compute = Literal["a8w8", "a16"]
COMPUTES: tuple[str, ...] = get_args(Compute)
COMPUTE_ENV = "SPEEDRUN_MLA_DECODE_COMPUTE"


class A8W8Knobs(BaseModel):
    """cfg["a8w8"]: the kernel knobs of the fp8-compute path (they override the bucket's for fp8 caches)."""

    model_config = ConfigDict(extra="forbid")
    mma_m: Literal["tokens", "heads"]  # which dimension is the MMA's M: tokens for sm90 wgmma (M >= 64)
    pv: Literal["fp8", "f16"]  # PV operands: P and V in fp8, or P in f16 with V upcast (exact)
    BLOCK_N: int = Field(ge=16)
    num_warps: int = Field(ge=1)
    num_stages: int = Field(ge=1)
    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None


class BucketKnobs(BaseModel):
    """The typed part of a bucket: which compute fp8 caches get by default, and its knobs."""

    model_config = ConfigDict(extra="allow")
    fp8_compute: Compute = "a16"
    a8w8: A8W8Knobs | None = None

    @model_validator(mode="after")
    def _a8w8_knobs(self) -> BucketKnobs:
        if self.fp8_compute == "a8w8" and self.a8w8 is None:
            raise ValueError("fp8_compute is a8w8 but the bucket has no a8w8 knobs")
        return self


def check_config(cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Validate a bucket's compute knobs (ValueError naming the bad field); returns cfg unchanged."""
    try:
        BucketKnobs.model_validate(cfg)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return cfg


def compute_from_env(env: dict[str, str] | None = None) -> str | None:
    """SPEEDRUN_MLA_DECODE_COMPUTE (set by the launcher from the recipe's overlays.mla_decode.compute): None when
    unset, i.e. each bucket's own fp8_compute."""
    value = (env if env is not None else os.environ).get(COMPUTE_ENV) or None
    if value is not None and value not in COMPUTES:
        raise ValueError(f"{COMPUTE_ENV}={value!r}; expected one of {COMPUTES}")
    return value


def compute_for(cfg: dict[str, Any], kv_dtype: torch.dtype, compute: str | None = None) -> str:
    """The compute that runs: "a16" for 16-bit caches; for fp8 caches the requested one, else the bucket's.
    a8w8 asked of a 16-bit cache is an error, never a silent a16."""
    if compute is not None and compute not in COMPUTES:
        raise ValueError(f"compute {compute!r}; expected one of {COMPUTES}")
    if kv_dtype.itemsize != 1:
        if compute == "a8w8":
            raise ValueError(f"compute a8w8 needs an fp8 KV cache (got {kv_dtype}): use --kv-cache-dtype fp8_e4m3")
        return "a16"
    return compute or cfg.get("fp8_compute", "a16")


def kv_config(cfg: dict[str, Any], kv_dtype: torch.dtype, compute: str | None = None) -> dict[str, Any]:
    """The bucket's config for this KV dtype and compute (see compute_for): fp8 caches take the kernel knobs of
    cfg["a8w8"] (a8w8) or cfg["fp8"] (a16), never the split width: programs_per_sm sizes the workspace the
    caller already holds. The result's "compute" says which ran."""
    if kv_dtype.itemsize != 1:
        compute_for(cfg, kv_dtype, compute)  # raises for a8w8
        return cfg
    if compute_for(cfg, kv_dtype, compute) == "a8w8":
        if not cfg.get("a8w8"):
            raise ValueError("compute a8w8: this config bucket has no a8w8 knobs")
        return {**cfg, **{k: v for k, v in cfg["a8w8"].items() if v is not None}, "compute": "a8w8"}
    return {**cfg, **{k: v for k, v in cfg.get("fp8", {}).items() if k in FP8_KNOBS}, "compute": "a16"}


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
    a8 = cfg.get("compute") == "a8w8" and kv_dtype.itemsize == 1
    return {
        "SPLIT_D": cfg.get("split_d", 1),
        "CDT": cdt,
        "CVT_ASM": asm,
        "QK_CHAINS": cfg.get("qk_chains", 1),
        **split_constexprs(cfg),
        "A8W8": a8,
        "TOKENS_M": a8 and cfg.get("mma_m") == "tokens",
        "PV_FP8": not a8 or cfg.get("pv", "fp8") == "fp8",
        "Q_EXP": q_exp(kv_dtype),
    }


def q_exp(kv_dtype: torch.dtype) -> int:
    """a8w8: q's row maximum is scaled into [2^(e-1), 2^e), e = floor(log2(max finite)) of the cache's fp8 format
    (8 for e4m3fn's 448, 7 for e4m3fnuz's 240)."""
    return math.floor(math.log2(torch.finfo(kv_dtype).max)) if kv_dtype.itemsize == 1 else 8


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
    compute: str | None = None,
) -> torch.Tensor:
    """Absorbed-MLA decode into `o` [bs, H, 512]; q [bs, H, 576]; kv the latent pool; token-slot kv_indices.
    compute: "a8w8" | "a16" for fp8 caches (None: the config bucket's fp8_compute; see compute_for)."""
    check_shapes(q, kv, o, page_size)
    bs, heads, _ = q.shape
    if bs == 0:
        return o
    arch = arch or current_arch()
    cfg = kv_config(config or config_for(heads, arch), kv.dtype, compute)
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
