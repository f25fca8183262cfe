"""Absorbed-MLA decode (DeepSeek V3/R1): a plan built once, one call per step.

    plan = make_plan(heads, torch.bfloat16, kv.dtype, device=q.device, page_size=1)    # config, programs, knobs
    mla_decode(q, kv, o, kv_indptr, kv_indices, plan, sm_scale=s)                       # every step

Shapes and dtypes (H = heads, 576 = 512 latent + 64 rope; V is the latent):
    q           [bs, H, 576]  bf16 | f16, unit stride in the last dim
    kv          [slots, 1, 576] or [pages, page_size, 1, 576]: bf16 | f16 | fp8 e4m3fn | e4m3fnuz; or E2M1
                (KV_MXFP4, float4_e2m1fn_x2 or uint8 codes) [slots, 1, 288] / [pages, ps, 1, 288] contiguous, with
    kv_scales   its E8M0 scales, one per plan.kv_block (32: MXFP4; 16: SGLang's fp4_mx_block16 pool) columns:
                [slots, 576 / kv_block] uint8 | float8_e8m0fnu, contiguous
    o           [bs, H, 512]  any float dtype, unit stride in the last dim (written in place, also returned)
    kv_indptr   [bs + 1] int32; kv_indices [kv_indptr[bs]] int32 | int64 token slots (any page size)
    workspace   (o [rows * H * 512], lse [rows * H]) float32, rows = plan.workspace_rows(bs); None: allocated

The plan holds everything that depends on shapes, dtypes and the device only: the config bucket (validated
once into config.MlaBucket, configs/<arch>.json), the compute path for fp8 caches, the split width and every kernel
constexpr. The call
depends on bs alone besides (CUDA-graph safe: sequence lengths are read on the device, no host sync).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl

from speedrun.overlays.arch import current_arch, is_amd, launch_options, load_configs, pdl_ok, sm_count
from speedrun.overlays.buckets import select
from speedrun.overlays.hooks import Unsupported
from speedrun.overlays.mla_decode.config import (
    Compute,
    Engine,
    Fp8Cvt,
    MergeKnobs,
    MlaBucket,
    MmaM,
    Pv,
    PvSplit,
    check_table,
)
from speedrun.overlays.mla_decode.kernels import (
    D_LATENT,
    D_QK,
    D_ROPE,
    _kv_store_kernel,
    _mla_merge_kernel,
    _mla_partial_kernel,
    _mla_partial_mxfp4_kernel,
)
from speedrun.overlays.pdl import dependent

LOG2E = 1.4426950408889634
# SNAP reads the whole batch's lengths in every partial program (bs x programs loads): past this batch it would
# cost more than it saves, while the flat split already cuts at most one sequence per program.
SNAP_MAX_BS = 512
MAX_BS = 8192  # the partial kernel loads kv_indptr[1:bs+1] as one vector to find its first sequence
FP8_KV_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
STORE_DTYPES = (torch.float8_e4m3fn,)  # what the fused KV store writes (fnuz caches keep stock's store)
STORE_BLOCK = triton.next_power_of_2(D_QK)  # the KV store's row vector (576 -> 1024, masked)
KV_MXFP4 = torch.float4_e2m1fn_x2  # an MXFP4 cache: E2M1 codes of the 576 columns + E8M0 scales per 32 (kv_scales)
KV_BLOCKS = (32, 16)  # columns an E2M1 cache's scale covers: MXFP4's, SGLang's fp4_mx_block16's (MLATokenToKVPoolFP4)
KV_DTYPES = (torch.bfloat16, torch.float16, *FP8_KV_DTYPES, KV_MXFP4)
Q_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class MlaDecodePlan:
    """What one (heads, q dtype, KV dtype, page size, device) decode runs: build it with `make_plan`."""

    heads: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    page_size: int
    arch: str
    compute: Compute  # what fp8 caches compute in (a16 for 16-bit caches)
    cfg: MlaBucket  # the bucket as it runs: fp8 / a8w8 knobs applied (kv_config)
    programs: int  # KV chunks per launch (the split width): sizes the workspace
    sms: int
    block_h: int
    kernel: Any = field(repr=False)  # the partial kernel: kernels._mla_partial_kernel or gluon_sm90's (engines)
    partial: dict[bool, dict[str, Any]] = field(repr=False)  # constexprs by `bs > SNAP_MAX_BS`
    partial_opts: dict[str, Any] = field(repr=False)
    merge_opts: dict[str, Any] = field(repr=False)
    pdl: bool = False  # the bucket's pdl on a device that has PDL: both kernels launch as programmatic dependents
    kv_block: int = 32  # an E2M1 cache's scale block (KV_BLOCKS)

    @property
    def groups(self) -> int:
        return math.ceil(self.heads / self.block_h)

    def workspace_rows(self, bs: int) -> int:
        return workspace_rows(bs, self.programs)

    def alloc_workspace(self, bs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return alloc_workspace(bs, self.heads, self.programs, device)

    def fits(self, part_o: torch.Tensor | None, part_lse: torch.Tensor | None, bs: int) -> bool:
        """Whether (part_o, part_lse) can serve as this plan's workspace at batch bs (contiguous, large enough)."""
        rows = self.workspace_rows(bs)
        return (
            part_o is not None
            and part_lse is not None
            and part_o.is_contiguous()
            and part_lse.is_contiguous()
            and part_o.numel() >= rows * self.heads * D_LATENT
            and part_lse.numel() >= lse_len(rows, self.heads)
        )


def make_plan(
    heads: int,
    q_dtype: torch.dtype,
    kv_dtype: torch.dtype,
    *,
    device: torch.device | str | None = None,
    page_size: int = 1,
    arch: str | None = None,
    compute: Compute | str | None = None,
    config: MlaBucket | Mapping[str, Any] | None = None,
    programs: int | None = None,
    kv_block: int = 32,
) -> MlaDecodePlan:
    """Validate once and resolve everything a decode step needs. Unsupported for dtypes the kernel does not serve;
    ValueError for a bad config field or a compute that cannot run (a8w8 on a 16-bit cache). `kv_block`: an E2M1
    cache's scale block (KV_BLOCKS)."""
    if q_dtype not in Q_DTYPES or kv_dtype not in KV_DTYPES:
        raise Unsupported(f"dtypes q={q_dtype} kv={kv_dtype} not served")
    if kv_block not in KV_BLOCKS:
        raise ValueError(f"kv_block must be one of {KV_BLOCKS} (columns an E2M1 cache's scale covers), got {kv_block}")
    if kv_dtype == KV_MXFP4 and q_dtype != torch.bfloat16:
        raise Unsupported(f"an MXFP4 cache is decoded to bf16: q must be bf16, not {q_dtype}")
    arch = arch or current_arch()
    base = MlaBucket.checked(config, "mla_decode config") if config is not None else config_for(heads, arch)
    cuda_only(base, arch, "mla_decode config")
    if kv_dtype == KV_MXFP4:  # the Triton kernel with the bucket's 16-bit knobs (no MXFP4 knobs of its own yet)
        base = without_gluon(base)
    cfg = kv_config(base, kv_dtype, compute)
    dev = torch.device(device) if device is not None else _default_device()
    sms = sm_count(dev)
    cpu = arch == "cpu"
    big = cfg.model_copy(update={"snap": False})  # past SNAP_MAX_BS: a shape-only choice (graph safe), both agree
    kernel = partial_kernel(cfg, heads, kv_dtype, arch, q_dtype)
    return MlaDecodePlan(
        heads=heads,
        q_dtype=q_dtype,
        kv_dtype=kv_dtype,
        page_size=page_size,
        arch=arch,
        compute=compute_for(base, kv_dtype, compute),
        cfg=cfg,
        programs=programs if programs is not None else num_programs(heads, cfg, sms),
        sms=sms,
        block_h=block_h(heads, cfg),
        kernel=kernel,
        partial={large: kernel_constexprs(c, q_dtype, kv_dtype, arch) for large, c in ((False, cfg), (True, big))},
        partial_opts={} if cpu else launch_options(cfg.launch_knobs(), arch),
        merge_opts={} if cpu else launch_options(cfg.merge.launch_knobs(), arch),
        pdl=cfg.pdl and pdl_ok(arch, dev.type == "cuda" and torch.version.hip is None),
        kv_block=kv_block,
    )


def mla_decode(
    q: torch.Tensor,
    kv: torch.Tensor,
    o: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    plan: MlaDecodePlan,
    *,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    kv_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """o = softmax(sm_scale * k_scale * q . K^T) @ (v_scale * V) per sequence (shapes: the module docstring;
    `kv_scales`: an MXFP4 cache's, whose values carry their own scales: k_scale and v_scale must be 1).
    Unsupported for inputs the kernel does not serve (the hook then runs stock SGLang)."""
    check_inputs(q, kv, o, plan)
    mx = mxfp4_rows(kv, kv_scales, plan.kv_block) if plan.kv_dtype == KV_MXFP4 else None
    if mx is not None and (k_scale, v_scale) != (1.0, 1.0):
        raise ValueError(f"an MXFP4 cache carries its scales: k_scale and v_scale must be 1, got {k_scale}, {v_scale}")
    bs = q.shape[0]
    if bs == 0:
        return o
    part_o, part_lse = workspace if workspace is not None else plan.alloc_workspace(bs, q.device)
    if not plan.fits(part_o, part_lse, bs):
        raise ValueError(f"workspace too small or not contiguous for bs={bs} heads={plan.heads} "
                         f"programs={plan.programs}")  # fmt: skip
    chunk = chunk_slot(part_lse, plan.workspace_rows(bs), plan.heads)
    ws = (part_o, part_lse, chunk)
    if mx is not None:
        _partial_mxfp4(q, *mx, o, ws, kv_indptr, kv_indices, plan, sm_scale)
    else:
        _partial(q, kv, o, ws, kv_indptr, kv_indices, plan, sm_scale * k_scale, v_scale)
    _merge(o, ws, kv_indptr, plan, v_scale)
    return o


def _partial_mxfp4(q, codes, scales, o, ws, kv_indptr, kv_indices, plan: MlaDecodePlan, sm_scale: float) -> None:
    """The partial kernel on an MXFP4 cache (codes [slots, 288], scales [slots, 18], uint8)."""
    bs, large = q.shape[0], q.shape[0] > SNAP_MAX_BS
    _mla_partial_mxfp4_kernel[(plan.programs * plan.groups,)](
        q, codes, scales, o, *ws, kv_indptr, kv_indices, float(sm_scale) * LOG2E, bs, plan.programs,
        q.stride(0), q.stride(1), codes.stride(0), scales.stride(0), o.stride(0), o.stride(1),
        H=plan.heads, BLOCK_H=plan.block_h, BLOCK_N=plan.cfg.BLOCK_N, BLOCK_B=block_b(bs),
        MIN_CHUNK=plan.cfg.min_chunk, DL=D_LATENT, DR=D_ROPE, SB=plan.kv_block, **plan.partial[large],
        **plan.partial_opts, **dependent(plan.pdl),
    )  # fmt: skip


def _partial(q, kv, o, ws, kv_indptr, kv_indices, plan: MlaDecodePlan, qk_scale: float, v_scale: float) -> None:
    """The partial kernel on a bf16 / f16 / fp8 cache (qk_scale: sm_scale * k_scale)."""
    bs, cfg, programs = q.shape[0], plan.cfg, plan.programs
    large = bs > SNAP_MAX_BS
    page_stride, tok_stride = kv_strides(kv, plan.page_size)
    plan.kernel[(programs * plan.groups,)](
        q, kv, o, *ws, kv_indptr, kv_indices, float(qk_scale) * LOG2E, float(v_scale), bs, programs,
        q.stride(0), q.stride(1), page_stride, tok_stride, o.stride(0), o.stride(1),
        H=plan.heads, BLOCK_H=plan.block_h, BLOCK_N=cfg.BLOCK_N, BLOCK_B=block_b(bs),
        MIN_CHUNK=cfg.min_chunk, PAGE_SIZE=plan.page_size, DL=D_LATENT, DR=D_ROPE,
        **plan.partial[large], **plan.partial_opts, **dependent(plan.pdl),
    )  # fmt: skip


def _merge(o, ws, kv_indptr, plan: MlaDecodePlan, v_scale: float) -> None:
    """The sequences split over several chunks: their partials (ws: part_o, part_lse, chunk) combined into o."""
    bs = o.shape[0]
    block_p, block_dv = merge_blocks(bs, plan.heads, plan.cfg.merge, plan.sms)
    _mla_merge_kernel[(bs, plan.heads, D_LATENT // block_dv)](
        o, *ws, kv_indptr, float(v_scale), o.stride(0), o.stride(1),
        H=plan.heads, BLOCK_P=block_p, BLOCK_DV=block_dv, DL=D_LATENT, **plan.merge_opts, **dependent(plan.pdl),
    )  # fmt: skip


def cast_saturates(dtype: torch.dtype = torch.float8_e4m3fn) -> bool:
    """Whether this torch's cast to `dtype` saturates past its largest finite value (torch >= 2.12 for e4m3fn) or
    writes NaN (before): the fused store writes what the running torch's cast writes."""
    return not torch.tensor([1e4]).to(dtype).float().isnan().item()


CAST_SATURATES = cast_saturates()


def store_kv(
    k: torch.Tensor, loc: torch.Tensor, cache: torch.Tensor, k_scale: torch.Tensor | None, *,
    saturate: bool = CAST_SATURATES,
) -> None:  # fmt: skip
    """cache[loc[i]] = (k[i] / k_scale) as e4m3fn, in one launch (CUDA-graph safe).

    k: [bs, 576] or [bs, 1, 576], bf16/fp16, unit stride in the last dim (the step's new latent rows);
    loc: [bs] int32/int64 cache rows; cache: [slots, 1, 576] float8_e4m3fn (SGLang's MLA pool); k_scale: a float32
    scalar tensor or None (no scaling). The bytes are SGLang's own store's (`k.div_(k_scale)` then the cast:
    reference.store_kv_reference) under this torch; `saturate` picks the other torch's overflow rule (tests)."""
    bs = k.shape[0]
    if bs:
        _kv_store_kernel[(bs,)](
            k, loc, cache, k if k_scale is None else k_scale, k.stride(0), cache.stride(0),
            D=D_QK, BLOCK_D=STORE_BLOCK, SCALED=k_scale is not None, SATURATE=saturate,
        )  # fmt: skip


def check_inputs(q: torch.Tensor, kv: torch.Tensor, o: torch.Tensor, plan: MlaDecodePlan) -> None:
    """Unsupported for anything the kernel does not serve (the caller then runs stock SGLang); ValueError when
    the tensors do not match the plan they are run with."""
    if q.dim() != 3 or q.shape[-1] != D_QK:
        raise Unsupported(f"q must be [bs, heads, {D_QK}], got {tuple(q.shape)}")
    width = D_QK // 2 if plan.kv_dtype == KV_MXFP4 else D_QK  # MXFP4: two codes a byte
    if kv.shape[-1] != width or kv.shape[-2] != 1 or kv.dim() not in (3, 4) or kv.stride(-1) != 1:
        raise Unsupported(f"KV pool must be [slots, 1, {width}] or [pages, ps, 1, {width}], got {tuple(kv.shape)}")
    if kv.dim() == 4 and kv.shape[1] != plan.page_size:
        raise Unsupported(f"4-D KV pool dim 1 ({kv.shape[1]}) != page_size {plan.page_size}")
    if o.shape != (q.shape[0], q.shape[1], D_LATENT) or o.stride(-1) != 1:
        raise Unsupported(f"o must be [bs, heads, {D_LATENT}] (unit stride), got {tuple(o.shape)}")
    if q.stride(-1) != 1:
        raise Unsupported("q must have unit stride in its last dim")
    if q.shape[0] > MAX_BS:
        raise Unsupported(f"batch {q.shape[0]} > {MAX_BS}")
    if (q.shape[1], q.dtype, kv.dtype) != (plan.heads, plan.q_dtype, plan.kv_dtype):
        raise ValueError(f"q {q.shape[1]} heads {q.dtype}, kv {kv.dtype} do not match the plan {plan}")


def mxfp4_rows(kv: torch.Tensor, kv_scales: torch.Tensor | None, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An E2M1 cache and its scales as uint8 rows addressed by token slot: ([slots, 288], [slots, 576 / block]).
    ValueError when the scales are missing or do not match the codes."""
    slots, per = kv.numel() // (D_QK // 2), D_QK // block
    if kv_scales is None or kv_scales.numel() != slots * per or not kv_scales.is_contiguous():
        got = None if kv_scales is None else tuple(kv_scales.shape)
        raise ValueError(f"an E2M1 cache with kv_block {block} needs kv_scales: {per} E8M0 bytes a slot, contiguous "
                         f"([{slots}, {per}]), got {got}")  # fmt: skip
    if not kv.is_contiguous():
        raise Unsupported("an MXFP4 cache must be contiguous (rows addressed by token slot)")
    return kv.view(torch.uint8).reshape(slots, D_QK // 2), kv_scales.view(torch.uint8).reshape(slots, -1)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- configs (validated once per arch)


@functools.cache
def table(arch: str) -> dict[str, MlaBucket]:
    """The arch's validated buckets by key (another AMD arch takes the gfx950 table, another CUDA one and the
    interpreter take sm90's without its Gluon choices: see without_gluon)."""
    try:
        raw = load_configs("mla_decode", arch)  # another CUDA arch: sm90's
    except FileNotFoundError:  # another AMD arch: the gfx950 table is the closest we have
        raw = load_configs("mla_decode", "gfx950")
    buckets = check_table(raw, f"mla_decode {arch}")
    for key, cfg in buckets.items():
        cuda_only(cfg, arch, f"mla_decode {arch} {key}")
    own = raw.get("_meta", {}).get("arch") == arch
    return buckets if own else {key: without_gluon(cfg) for key, cfg in buckets.items()}


# a8w8 knobs only the Gluon kernels read
GLUON_ONLY = ("programs_per_sm", "cvt_rows", "pipe_pv", "pv_split", "v_bufs", "lazy_max")


def without_gluon(cfg: MlaBucket) -> MlaBucket:
    """A bucket of sm90's table as another arch runs it: the Gluon kernel is sm90's only (wgmma), so a bucket
    that chose it for fp8 caches computes them a16 again (on sm90 the Triton a8w8 kernel was slower than a16,
    PERF.md round 4) and 16-bit caches run the Triton kernel; explicit a8w8 requests get the Triton a8w8 kernel."""
    if cfg.a8w8 is not None and cfg.a8w8.engine.gluon:
        a8w8 = {k: v for k, v in cfg.a8w8.entry().items() if k not in GLUON_ONLY}
        cfg = cfg.replace(fp8_compute=Compute.A16, a8w8={**a8w8, "engine": Engine.TRITON.value})
    return cfg.replace(kv16_engine=Engine.TRITON.value) if cfg.kv16_engine.gluon else cfg


def cuda_only(cfg: MlaBucket, arch: str, where: str) -> None:
    """ValueError when a bucket for an AMD arch sets maxnreg (itself or in its fp8 overrides): a PTX register cap
    the AMD compiler has no option for (arch.for_arch would drop it, so the table would not run what it says)."""
    if is_amd(arch) and (cfg.maxnreg is not None or (cfg.fp8 is not None and cfg.fp8.maxnreg is not None)):
        raise ValueError(f"{where}: maxnreg is CUDA-only (PTX .maxnreg); expected none on {arch} (use waves_per_eu)")


def config_for(heads: int, arch: str | None = None) -> MlaBucket:
    """The first `heads<=N` bucket of the arch's table that holds `heads` (the largest one otherwise)."""
    buckets = table(arch or current_arch())
    return buckets[select(buckets, "heads", heads)]


def compute_for(cfg: MlaBucket, kv_dtype: torch.dtype, compute: Compute | str | None = None) -> Compute:
    """The compute that runs: a16 for 16-bit caches; for fp8 caches the requested one, else the bucket's.
    a8w8 asked of a 16-bit cache is an error, never a silent a16."""
    if compute is not None and compute not in tuple(Compute):
        raise ValueError(f"compute {compute!r}; expected one of {tuple(c.value for c in Compute)}")
    if kv_dtype not in FP8_KV_DTYPES:
        if compute == Compute.A8W8:
            raise ValueError(f"compute a8w8 needs an fp8 KV cache (got {kv_dtype}): use --kv-cache-dtype fp8_e4m3")
        return Compute.A16
    return Compute(compute) if compute is not None else cfg.fp8_compute


def kv_config(cfg: MlaBucket, kv_dtype: torch.dtype, compute: Compute | str | None = None) -> MlaBucket:
    """The bucket as it runs for this KV dtype and compute (see compute_for): fp8 caches take the kernel knobs of
    its "a8w8" (a8w8) or "fp8" (a16) and say in fp8_compute which ran; a8w8 may set the split width
    (programs_per_sm), which sizes the workspace: a server sizes it once from its model's own KV dtype and passes
    that width to every later plan (backend.py). MXFP4 caches take its "mxfp4"; 16-bit caches: the bucket as is."""
    run = compute_for(cfg, kv_dtype, compute)  # raises for a8w8 on a 16-bit cache
    if kv_dtype == KV_MXFP4:
        return cfg.with_overrides(cfg.mxfp4)
    if kv_dtype not in FP8_KV_DTYPES:
        return cfg
    if run == Compute.A8W8 and cfg.a8w8 is None:
        raise ValueError("compute a8w8: this config bucket has no a8w8 knobs")
    over = cfg.a8w8 if run == Compute.A8W8 else cfg.fp8
    return cfg.with_overrides(over).model_copy(update={"fp8_compute": run})


# ---------------------------------------------------------------- kernel constexprs and launch geometry


def _sm(arch: str) -> int:
    return int("".join(c for c in arch[2:] if c.isdigit()) or 0) if arch.startswith("sm") else 0


def engine(cfg: MlaBucket, kv_dtype: torch.dtype) -> Engine:
    """The partial kernel the bucket as it runs (kv_config's) computes with: `a8w8.engine` on fp8 caches computing
    a8w8, `kv16_engine` on 16-bit ones, else the Triton kernel."""
    if kv_dtype not in FP8_KV_DTYPES:
        return cfg.kv16_engine
    return cfg.a8w8.engine if cfg.fp8_compute == Compute.A8W8 else Engine.TRITON


def gluon_engine(cfg: MlaBucket, kv_dtype: torch.dtype) -> bool:
    """Whether the bucket as it runs computes with a Gluon kernel (gluon_sm90.py or gluon_sm90_ws.py)."""
    return engine(cfg, kv_dtype).gluon


# What the Gluon kernel is written for (gluon_sm90.py): a8w8 knob -> the value it must have on fp8 caches.
GLUON_KNOBS = {"mma_m": MmaM.TOKENS, "pv": Pv.F16, "BLOCK_N": 64}
GLUON_KV = (torch.float8_e4m3fn, torch.bfloat16)
GLUON_CVT_ROWS = 32  # the V copy's slice (a8w8.cvt_rows unset)
GLUON_WS_CVT_ROWS = 16  # the warp-specialized kernel's: its converter's registers (88 a thread)


WS_ONLY = ("pv_split", "v_bufs", "lazy_max")  # a8w8 knobs of gluon_sm90_ws.py alone


def partial_kernel(cfg: MlaBucket, heads: int, kv_dtype: torch.dtype, arch: str,
                   q_dtype: torch.dtype = torch.bfloat16) -> Any:  # fmt: skip
    """The partial kernel the bucket runs: the Triton one, or the Gluon one (see gluon_engine), which is checked
    here against what it is written for (ValueError naming the knob)."""
    if kv_dtype == KV_MXFP4:
        return _mla_partial_mxfp4_kernel
    eng = engine(cfg, kv_dtype)
    fp8, ws = kv_dtype in FP8_KV_DTYPES, eng == Engine.GLUON_WS
    where = f"mla_decode {'a8w8.engine' if fp8 else 'kv16_engine'} {eng.value}"
    a8w8 = fp8 and cfg.fp8_compute == Compute.A8W8  # the a8w8 knobs are in use (a16 leaves them unread)
    if a8w8 and not ws and any(getattr(cfg.a8w8, k) is not None for k in WS_ONLY):
        raise ValueError(f"{where}: a8w8.pv_split, v_bufs and lazy_max are the warp-specialized kernel's (engine "
                         "gluon_ws)")  # fmt: skip
    if not eng.gluon:
        return _mla_partial_kernel
    if _sm(arch) != 90:
        raise ValueError(f"{where}: sm90 only (wgmma), not {arch}")
    if kv_dtype not in GLUON_KV or (not fp8 and q_dtype != kv_dtype):
        raise ValueError(f"{where}: e4m3fn KV, or bf16 KV with bf16 q, not {kv_dtype} KV with {q_dtype} q")
    if heads > 16 or block_h(heads, cfg) != 16:
        raise ValueError(f"{where}: one program holds all heads (<= 16, BLOCK_H 16), not {heads} heads")
    knobs, src, pre = (GLUON_KNOBS, cfg.a8w8, "a8w8.") if fp8 else ({"BLOCK_N": 64}, cfg, "")
    for knob, want in knobs.items():
        if getattr(src, knob) != want and not (ws and knob == "pv"):  # ws computes PV in f16 or fp8
            raise ValueError(f"{where}: {pre}{knob} must be {want}, not {getattr(src, knob)}")
    if cfg.num_warps not in (4, 8):
        raise ValueError(f"{where}: {pre}num_warps must be 4 or 8 (one or two warpgroups), not {cfg.num_warps}")
    cvt = cfg.a8w8.cvt_rows if fp8 else None
    if cvt is not None and (cvt % 8 or cfg.BLOCK_N % cvt):
        raise ValueError(f"{where}: a8w8.cvt_rows must be a multiple of 8 dividing BLOCK_N {cfg.BLOCK_N}, not {cvt}")
    if fp8 and cfg.a8w8.pipe_pv and cfg.num_stages > 2:
        raise ValueError(f"{where}: a8w8.pipe_pv double-buffers V's f16 copy: num_stages must be <= 2 to fit shared "
                         f"memory, not {cfg.num_stages}")  # fmt: skip
    if ws:
        return _ws_kernel(cfg, fp8, where)
    from speedrun.overlays.mla_decode.gluon_sm90 import mla_partial_sm90

    return mla_partial_sm90


# gluon_sm90_ws.py's shared memory: 36 KB fp8 ring slots, V buffers (64 KB f16 / 32 KB fp8 V^T), 9 KB of q, two P
# buffers, against an H100 CTA's 227 KB less 4 KB for Triton's scratch
GLUON_WS_SMEM = 227 * 1024 - 4096


def ws_shared_bytes(stages: int, v_bufs: int, pv: Pv) -> int:
    v, p = (32768, 1024) if pv == Pv.FP8 else (65536, 2048)
    return stages * 36864 + v_bufs * v + 9216 + 2 * p


def _ws_kernel(cfg: MlaBucket, fp8: bool, where: str) -> Any:
    """gluon_sm90_ws.py's kernel, past what only it requires (fp8 caches, eight MMA warps, ring slots that fit)."""
    if not fp8:
        raise ValueError(f"{where}: fp8 e4m3 caches only (16-bit caches: kv16_engine gluon)")
    if cfg.num_warps != 8:
        raise ValueError(f"{where}: a8w8.num_warps must be 8 (two MMA warpgroups), not {cfg.num_warps}")
    v_bufs = cfg.a8w8.v_bufs or cfg.num_stages
    if v_bufs > cfg.num_stages:
        raise ValueError(f"{where}: a8w8.v_bufs must be <= num_stages {cfg.num_stages} (a V buffer per ring slot at "
                         f"most), not {v_bufs}")  # fmt: skip
    if (need := ws_shared_bytes(cfg.num_stages, v_bufs, cfg.a8w8.pv)) > GLUON_WS_SMEM:
        raise ValueError(f"{where}: a8w8.num_stages {cfg.num_stages} with v_bufs {v_bufs} and pv {cfg.a8w8.pv} "
                         f"needs {need} B of shared memory, over {GLUON_WS_SMEM}")  # fmt: skip
    if cfg.a8w8.pipe_pv is not None:
        raise ValueError(f"{where}: a8w8.pipe_pv is engine gluon's knob (gluon_ws always leaves PV in flight)")
    if (cfg.a8w8.cvt_rows or GLUON_WS_CVT_ROWS) > 32:  # its converter holds the slice: 56 + 2 x rows registers
        raise ValueError(f"{where}: a8w8.cvt_rows must be <= 32 (the converter's registers), not {cfg.a8w8.cvt_rows}")
    from speedrun.overlays.mla_decode.gluon_sm90_ws import mla_partial_sm90_ws

    return mla_partial_sm90_ws


def kernel_constexprs(cfg: MlaBucket, q_dtype: torch.dtype, kv_dtype: torch.dtype, arch: str) -> dict:
    """The partial kernel's mode constexprs of a bucket as it runs (kv_config's). SPLIT_D, CDT (MMA input dtype),
    CVT_ASM: fp8_cvt "bf16" converts fp8 to q's dtype; "f16" computes in f16 (e4m3 -> f16 is exact; q gets a
    power-of-two guard); "asm" is "f16" with the packed sm89+ inline-asm convert (e4m3fn on CUDA only). A8W8 and
    its TOKENS_M / PV_FP8 (the bucket's a8w8 mma_m and pv) for fp8 caches computing a8w8; TOKENS_M otherwise from
    the bucket's a16_mma_m (the 16-bit tokens-as-M path)."""
    if kv_dtype == KV_MXFP4:  # _mla_partial_mxfp4_kernel: the split's, and sm90's inline-PTX E2M1 decode
        return {**split_constexprs(cfg), "ASM": _sm(arch) >= 90 and torch.version.hip is None}
    if engine(cfg, kv_dtype) == Engine.GLUON_WS:  # the converter's slice; the rest is fixed (gluon_sm90_ws.py)
        return {**split_constexprs(cfg), "Q_EXP": q_exp(kv_dtype), "WARPS": cfg.num_warps,
                "CVT_ROWS": cfg.a8w8.cvt_rows or GLUON_WS_CVT_ROWS, "STAGES": cfg.num_stages,
                "NV": cfg.a8w8.v_bufs or cfg.num_stages,
                "PV_FP8": cfg.a8w8.pv == Pv.FP8, "PV_HEADS": cfg.a8w8.pv_split == PvSplit.HEADS,
                "LAZY_MAX": bool(cfg.a8w8.lazy_max)}  # fmt: skip
    if gluon_engine(cfg, kv_dtype):  # its own constexprs (its semantics are fixed: tokens as M; fp8: a8w8, f16 PV)
        fp8 = kv_dtype in FP8_KV_DTYPES
        cvt = (cfg.a8w8.cvt_rows if fp8 else None) or GLUON_CVT_ROWS
        return {**split_constexprs(cfg), "STAGES": cfg.num_stages, "Q_EXP": q_exp(kv_dtype), "WARPS": cfg.num_warps,
                "CVT_ROWS": cvt, "PIPE_PV": bool(fp8 and cfg.a8w8.pipe_pv)}  # fmt: skip
    fp8 = kv_dtype in FP8_KV_DTYPES
    cdt = tl.float16 if q_dtype == torch.float16 else tl.bfloat16
    cvt = cfg.fp8_cvt if fp8 else None
    if cvt in (Fp8Cvt.F16, Fp8Cvt.ASM):
        cdt = tl.float16
    asm = cvt == Fp8Cvt.ASM and kv_dtype == torch.float8_e4m3fn and _sm(arch) >= 89
    a8w8 = cfg.a8w8 if fp8 and cfg.fp8_compute == Compute.A8W8 else None
    return {
        "SPLIT_D": cfg.split_d,
        "CDT": cdt,
        "CVT_ASM": asm,
        "QK_CHAINS": cfg.qk_chains,
        **split_constexprs(cfg),
        "A8W8": a8w8 is not None,
        "TOKENS_M": (a8w8.mma_m if a8w8 is not None else cfg.a16_mma_m) == MmaM.TOKENS,
        "PV_FP8": a8w8 is None or a8w8.pv == Pv.FP8,
        "Q_EXP": q_exp(kv_dtype),
    }


def q_exp(kv_dtype: torch.dtype) -> int:
    """a8w8: q's row maximum is scaled into [2^(e-1), 2^e), e = floor(log2(max finite)) of the cache's fp8 format
    (8 for e4m3fn's 448, 7 for e4m3fnuz's 240)."""
    return math.floor(math.log2(torch.finfo(kv_dtype).max)) if kv_dtype in FP8_KV_DTYPES else 8


def block_b(bs: int) -> int:
    """The batch as one vector (the kernels find a chunk's first sequence and the longest one with it)."""
    return max(256, triton.next_power_of_2(bs))


def split_constexprs(cfg: MlaBucket) -> dict[str, Any]:
    """How the batch's flat KV range is cut into equal chunks (SNAP: see kernels._chunk_size); the partial kernel
    writes the chunk it used for the merge."""
    return {"SNAP": cfg.snap}


def block_h(heads: int, cfg: MlaBucket) -> int:
    # tl.dot wants M >= 16: fewer heads are padded (masked), more are split into head groups.
    return max(16, min(cfg.BLOCK_H, triton.next_power_of_2(heads)))


def num_programs(heads: int, cfg: MlaBucket, sms: int) -> int:
    """KV chunks per launch: `programs_per_sm` waves of the GPU, shared by the head groups of a chunk."""
    groups = math.ceil(heads / block_h(heads, cfg))
    return max(1, (cfg.programs_per_sm * sms) // groups)


def chunk_tokens(lens: list[int], programs: int, min_chunk: int, snap: bool = False) -> int:
    """Host mirror of the kernels' `_chunk_size` (tests and predictions only; the kernels compute it on the device)."""
    chunk = -(-max(-(-sum(lens) // programs), min_chunk) // 16) * 16
    if not snap:
        return chunk
    lmax = max(max(lens, default=1), 1)
    snapped = -(-lmax // max(lmax // chunk, 1)) if lmax >= chunk else -(-chunk // lmax) * lmax
    return snapped if snapped * 16 <= chunk * 17 else chunk


def merge_blocks(bs: int, heads: int, merge: MergeKnobs, sms: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_DV) of the merge: split the 512 output columns until there are ~4 programs per SM,
    so a lone long sequence (hundreds of partials) merges in parallel; cap the [P, DV] tile at merge.max_tile
    floats (registers are sized for the tile even in the many programs that merge nothing and exit)."""
    split = max(1, min(D_LATENT // merge.min_block_dv, triton.next_power_of_2(-(-4 * sms // (bs * heads)))))
    block_dv = D_LATENT // split
    return max(1, min(merge.BLOCK_P, merge.max_tile // block_dv)), block_dv


def workspace_rows(bs: int, programs: int) -> int:
    """Partial slots: segment (chunk p, sequence b) lives at p + b < programs + bs."""
    return programs + bs


def lse_len(rows: int, heads: int) -> int:
    """The lse workspace: a log2-sum-exp per (slot, head), then one int32 for the chunk (chunk_slot)."""
    return rows * heads + 1


def chunk_slot(part_lse: torch.Tensor, rows: int, heads: int) -> torch.Tensor:
    """The int32 after the lse rows where the partial kernel leaves the chunk it computed for the merge."""
    return part_lse.view(torch.int32)[rows * heads : rows * heads + 1]


def alloc_workspace(bs: int, heads: int, programs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = workspace_rows(bs, programs)
    return (
        torch.empty(rows * heads * D_LATENT, dtype=torch.float32, device=device),
        torch.empty(lse_len(rows, heads), dtype=torch.float32, device=device),
    )


def kv_strides(kv: torch.Tensor, page_size: int) -> tuple[int, int]:
    """(page stride, token stride) in elements: token slot t lives at (t // ps) * page + (t % ps) * tok."""
    if kv.dim() == 4:
        return kv.stride(0), kv.stride(1)
    return kv.stride(0) * page_size, kv.stride(0)


__all__ = ["KV_MXFP4", "Compute", "MlaDecodePlan", "check_inputs", "make_plan", "mla_decode", "store_kv"]
