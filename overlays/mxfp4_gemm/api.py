"""MXFP4 GEMM (quark `w_mxfp4_a_mxfp4` linears): a plan built once per weight, one call per step.

    w, w_scale, layout = relayout_weight(w, w_scale)            # load time (sm90: the table's "_layout", swz128_g64)
    plan = make_plan(n, k, layout, device=x.device)             # every M bucket resolved and validated
    out = mxfp4_gemm(a, w, w_scale, plan)                       # every step: C = A . W^T

Shapes and dtypes (M tokens, N output features, K input features, K % 32 == 0):
    a        [M, K] bf16 | f16 (unit stride in K; quantized to MXFP4 unless quant_a=False: w4a16)
             or pre-quantized: packed uint8 [M, K/2] with a_scale [M, K/32] uint8 E8M0 (any strides)
    w        [N, K/2] uint8 E2M1 codes (plain: k order; swz128*: re-laid out, same shape)
    w_scale  [N, K/32] uint8 E8M0 (swz128*: rows padded to 16 bytes)
    out      [M, N] out_dtype (bf16 default)

Routes (per bucket, key "route", config.Route) for bf16 activations quantized to MXFP4:
- "fused": one launch; A is quantized inside the GEMM's A-load. Every decode bucket (M <= 64) on both archs: one
  kernel per call, split-K reduced in the same launch (PERF.md, round 4).
- "prequant": one quantizer launch, then the GEMM reads quantized A (large M: each A element is quantized once
  instead of once per N tile). sm90 writes dequant(quant(A)) as bf16; gfx950 writes codes + scales.
- "dequant_w" (sm90 only): quantize A and dequantize W to bf16 with our kernels, then cuBLAS bf16 (prefill, where
  sm90 has no FP4 MMA and bf16 tensor-core time dominates).
These routes multiply exactly the same values (the reference quantizer's), only the summation order differs.
- "stock_fp8" (CUDA only, sm90 prefill): W converted to FP8 blocks per call, then stock SGLang's FP8 block GEMM,
  which quantizes A to FP8 per 128-group itself: w4a8, more precise than the w4a4 the other routes emulate
  (stock_fp8.py). Off CUDA, or without DeepGEMM, the plan runs these buckets as "dequant_w" (`stock_routes`).

The plan holds what depends on (N, K), the weight layout, the arch and the device: per M bucket
(configs/<arch>.json, `m<=N`, with the bucket's "swz" / "a16" / per-shape overrides applied) the route, the
kernel constexprs and launch options. The call picks the bucket by M; split-K is host arithmetic on M (graph safe).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from speedrun.overlays import environ
from speedrun.overlays.arch import current_arch, is_amd, launch_options, load_configs, pdl_ok, sm_count
from speedrun.overlays.buckets import Buckets
from speedrun.overlays.buffers import splitk_counters
from speedrun.overlays.mxfp4_gemm import stock_fp8
from speedrun.overlays.mxfp4_gemm.config import (
    DIM,
    AMode,
    Engine,
    GemmBucket,
    GemmTable,
    Layout,
    Route,
    WDeq,
    check_table,
)
from speedrun.overlays.mxfp4_gemm.kernels import (
    mxfp4_dequant_kernel,
    mxfp4_gemm_kernel,
    mxfp4_quant_kernel,
    qdq_rows_kernel,
)
from speedrun.overlays.pdl import dependent, launch_kw

OP = "mxfp4_gemm"
# A decode SM is taken as issue-bound (rather than latency-bound) from SAT_WARPS warps (2 per scheduler) and 2 CTAs
# on it: each K step has CTA-wide barriers and a wgmma wait, which another CTA's warps fill.
SAT_WARPS = 8
RED_REGS = 64  # fp32 registers per thread the split-K reduction may hold in flight (RED partials per round)
# engine gluon_ws (gluon_sm90_ws.py): its tiles, its MMA warpgroup, and the shared memory one CTA may take (the H100's
# 227 KB less what the compiler adds: barriers, the split-K arrival broadcast; AOT: 332 B)
WS_BLOCK_M = (16, 32, 64)
WS_BLOCK_N = (64, 128)
WS_WARPS = 4
WS_SMEM = 227 * 1024 - 1024
WS_STAGES = 4  # ring slots when the bucket sets no num_stages


# ---------------------------------------------------------------- configs (validated once per arch)


@functools.cache
def table(arch: str) -> GemmTable:
    """The arch's validated table."""
    return check_table(load_configs(OP, arch), f"{OP} {arch}")


@functools.cache
def _buckets(arch: str) -> Buckets:
    return Buckets.of(table(arch).buckets, DIM)


def config_arch(device: torch.device) -> str:
    """Which config table a device uses ("cpu" = the interpreter, which uses the sm90 table)."""
    if device.type != "cuda":
        return "sm90"
    arch = current_arch()
    if is_amd(arch) and arch != "gfx950":
        raise NotImplementedError(f"mxfp4_gemm has no config for {arch} (needs gfx950 scaled MFMA or CUDA)")
    return arch


def weight_layout(arch: str) -> Layout:
    """The layout the hook gives weights at load time: the table's "_layout" (sm90: swz128_g64), else plain."""
    return Layout.PLAIN if is_amd(arch) else table(arch).layout


def bucket_key(m: int, arch: str) -> str:
    """The `m<=N` / `m>N` bucket of a call with M tokens."""
    return _buckets(arch).pick(m)


def pick_config(m: int, n: int, k: int, arch: str) -> GemmBucket:
    """The bucket of M, overlaid with the per-shape entry "<N>x<K>:<bucket>" when the table has one."""
    return table(arch).config(bucket_key(m, arch), n, k)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Kernel:
    """One GEMM launch as a bucket resolves it: the knobs it runs, every constexpr but SPLIT / EVEN_K, options."""

    cfg: GemmBucket
    consts: dict[str, Any]
    opts: dict[str, Any]
    engine: Engine = Engine.TRITON  # GLUON_WS: consts are gluon_sm90_ws.mxfp4_gemm_ws_kernel's

    @property
    def tile(self) -> tuple[int, int, int]:
        """(BLOCK_M, BLOCK_N, BLOCK_K) as launched (gluon_ws: K tiles of one swz128 chunk, 128)."""
        c = self.consts
        return c["BLOCK_M"], c["BLOCK_N"], c.get("BLOCK_K", self.cfg.BLOCK_K)

    @property
    def pdl(self) -> bool:
        """Launched as a programmatic dependent (the bucket's pdl where the device has PDL)."""
        return bool(self.consts.get("PDL"))


@dataclass(frozen=True)
class Launch:
    """One M bucket, resolved for one plan: the route and its kernel for each form of A."""

    route: Route
    quant: Kernel  # bf16 A, MXFP4 activations: fused (A_MODE 1) or after the quantizer (gfx950 2, sm90 0)
    w4a16: Kernel  # bf16 A as is (A_MODE 0, the bucket's "a16" overrides)
    packed: Kernel  # pre-quantized A (A_MODE 2)
    quant16: Kernel | None = None  # engine gluon_ws: the Triton kernel for fp16 A (the Gluon kernel takes bf16)


@dataclass(frozen=True)
class GemmPlan:
    """What one weight (N, K, layout) runs with on one device: build it with `make_plan` (load time)."""

    n: int
    k: int
    layout: Layout
    arch: str
    device: torch.device
    amd: bool  # gfx950 on a GPU: tl.dot_scaled on packed operands
    sms: int
    buckets: Buckets | None  # None: one forced config for every call (sweeps, tests)
    launches: dict[str, Launch] = field(repr=False)
    stock_why: str | None = None  # why the table's stock_fp8 buckets run dequant_w here (None: they don't)

    def launch(self, m: int) -> Launch:
        return self.launches["forced" if self.buckets is None else self.buckets.pick(m)]

    @property
    def stock(self) -> bool:
        """Whether some calls go to stock's FP8 block GEMM (then its scratch is reserved at load time)."""
        return any(run.route == Route.STOCK_FP8 for run in self.launches.values())

    def stock_above(self) -> int | None:
        """The M past which calls go to stock's FP8 block GEMM (stock buckets come last), None if none do."""
        if self.buckets is None or not self.stock:
            return None
        return max((lim for lim, key in self.buckets.upto if self.launches[key].route != Route.STOCK_FP8), default=0)

    def route_line(self) -> str:
        """How this plan routes bf16-activation calls, for the per-process report."""
        m = self.stock_above()
        if m is not None:
            line = (f"M <= {m}: speedrun MXFP4 kernels; M > {m}: stock FP8 block GEMM (DeepGEMM; weight converted "
                    "to FP8 per call, FP8 activations)")  # fmt: skip
        elif self.stock_why:
            line = f"speedrun MXFP4 kernels at every M (stock_fp8 buckets run dequant_w: {self.stock_why})"
        else:
            line = "speedrun MXFP4 kernels at every M"
        ws = [key for key, run in self.launches.items() if run.quant.engine == Engine.GLUON_WS]
        return line + (f"; warp-specialized Gluon kernel in {', '.join(ws)}" if ws else "")


def make_plan(n: int, k: int, layout: Layout | str = Layout.PLAIN, *, device: torch.device | str | None = None,
              arch: str | None = None, config: GemmBucket | Mapping[str, Any] | None = None) -> GemmPlan:  # fmt: skip
    """Resolve and validate every M bucket of the arch's table for this weight once; `config` forces one bucket's
    knobs for every call. NotImplementedError for a layout the arch cannot run; ValueError for a bad field."""
    device = torch.device(device) if device is not None else _default_device()
    arch = arch or config_arch(device)
    layout = Layout(layout)
    cuda = device.type == "cuda"
    amd = is_amd(arch) and cuda
    if layout != Layout.PLAIN and amd:
        raise NotImplementedError(f"weight layout {layout.value!r} on {arch}")
    if config is not None:
        buckets, cfgs = None, {"forced": GemmBucket.checked(config, f"{OP} config")}
    else:
        buckets = _buckets(arch)
        keys = [key for _, key in buckets.upto] + ([buckets.above] if buckets.above else [])
        cfgs = {key: table(arch).config(key, n, k) for key in keys}
    launches = {key: resolve(cfg, n, k, layout, arch, cuda) for key, cfg in cfgs.items()}
    plan = GemmPlan(n, k, layout, arch, device, amd, sm_count(device), buckets, launches)
    if not any(run.quant.cfg.route == Route.STOCK_FP8 for run in launches.values()):
        return plan
    return stock_routes(plan, stock_refusal(arch, cuda))


def stock_refusal(arch: str, cuda: bool) -> str | None:
    """Why stock_fp8 buckets cannot go to stock's FP8 block GEMM here (one line), None when they can: a CUDA
    device (not ROCm, whose large M is aiter's; not the CPU interpreter) where stock's DeepGEMM path runs, unless the
    setting mxfp4_gemm_stock_fp8 is off."""
    if not cuda or is_amd(arch) or torch.version.hip is not None:
        return f"stock's FP8 block GEMM route is CUDA-only, not {arch if cuda else 'the CPU interpreter'}"
    if environ.settings().mxfp4_gemm_stock_fp8 == "off":
        return "setting mxfp4_gemm_stock_fp8 off"
    return stock_fp8.deepgemm_missing()


def stock_routes(plan: GemmPlan, refusal: str | None) -> GemmPlan:
    """The plan with its table's stock_fp8 buckets taken (`refusal` None) or run as dequant_w (their kernels are
    the same: the A mode of both is bf16), `refusal` kept as the reason. ValueError when a stock bucket precedes
    one of ours: the route is one threshold, which the report states."""
    stock = {key: run.quant.cfg.route == Route.STOCK_FP8 for key, run in plan.launches.items()}
    keys = [key for _, key in plan.buckets.upto] + [plan.buckets.above] if plan.buckets else list(stock)
    order = [stock[key] for key in keys if key in stock]
    if order != sorted(order):
        raise ValueError(f"{OP} {plan.arch}: route stock_fp8 buckets must come after every other one ({keys})")
    route = Route.DEQUANT_W if refusal else Route.STOCK_FP8
    launches = {key: replace(run, route=route) if stock[key] else run for key, run in plan.launches.items()}
    return replace(plan, launches=launches, stock_why=refusal)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(cfg: GemmBucket, n: int, k: int | None, layout: Layout, arch: str, cuda: bool) -> Launch:
    """One bucket for one weight: its route and each form of A's kernel (k None: no BLOCK_K shrink, AOT specs).
    ValueError for b_regs on an AMD arch (a wgmma knob)."""
    if cfg.b_regs and is_amd(arch):
        raise ValueError(f"{OP} {arch}: b_regs is an sm90 knob (wgmma); expected false on AMD")
    if layout != Layout.PLAIN:  # the bucket's overrides for swz128 weights (fewer registers: more stages fit)
        cfg = cfg.with_overrides(cfg.swz)
    route = route_for(cfg, n, k)
    mode = quant_mode(route, is_amd(arch) and cuda)
    quant = kernel(cfg, mode, arch, k, layout, cuda)
    quant16 = kernel(cfg.replace(engine=Engine.TRITON), mode, arch, k, layout, cuda) if quant.engine.gluon else None
    return Launch(
        route,
        quant,
        kernel(cfg.with_overrides(cfg.a16), AMode.BF16, arch, k, layout, cuda),
        kernel(cfg, AMode.MXFP4, arch, k, layout, cuda),
        quant16,
    )


def quant_mode(route: Route, amd: bool) -> AMode:
    """The A mode of a route's GEMM on bf16 A with MXFP4 activations (`amd`: gfx950 on a GPU)."""
    return AMode.QUANT if route == Route.FUSED else (AMode.MXFP4 if amd else AMode.BF16)


def kernel(cfg: GemmBucket, a_mode: AMode, arch: str, k: int | None, layout: Layout, cuda: bool) -> Kernel:
    """The kernel constexprs (ints at the kernel boundary: enums by value) and launch options of one config in one
    A mode. Engine gluon_ws: its knobs are checked wherever the bucket is resolved; it runs where `ws_applies`, the
    Triton kernel elsewhere."""
    if cfg.engine == Engine.GLUON_WS:
        consts = ws_constexprs(cfg, layout)
        if ws_applies(arch, cuda, layout, a_mode):
            return Kernel(cfg, consts, {"num_warps": WS_WARPS}, Engine.GLUON_WS)
    amd = is_amd(arch) and cuda
    dot_scaled = amd and a_mode != AMode.BF16
    asm = cuda and not is_amd(arch)  # inline PTX: CUDA only (never the interpreter)
    bm, bn, bk = cfg.BLOCK_M, cfg.BLOCK_N, _block_k(cfg, k)
    if layout != Layout.PLAIN:
        bk = max(bk, 128)  # whole swz128 chunks
    if bn % layout.row_group:
        raise ValueError(f"mxfp4_gemm: BLOCK_N {bn} is not a multiple of the {layout} row group ({layout.row_group})")
    consts = {"A_MODE": a_mode.value, "DOT_SCALED": dot_scaled, "DOT_F32": not cuda, "BLOCK_M": bm, "BLOCK_N": bn,
              "BLOCK_K": bk, "GROUP": cfg.GROUP, **deq_flags(cfg, bk, asm, dot_scaled, layout),
              "A_ASM": asm and a_mode == AMode.QUANT and not dot_scaled,
              "RED": red_unroll(bm, bn, cfg.num_warps), "W_ROWG": layout.row_group}  # fmt: skip
    if asm and cfg.b_regs and a_mode == AMode.BF16:  # off: the shipped kernels' constants (B_REGS defaults off)
        consts["B_REGS"] = True
    if cfg.pdl and pdl_ok(arch, cuda):  # likewise PDL (off by default)
        consts["PDL"] = True
    return Kernel(cfg, consts, kernel_options(cfg, arch, cuda))


def ws_applies(arch: str, cuda: bool, layout: Layout, a_mode: AMode) -> bool:
    """Where gluon_sm90_ws.py runs: an sm90 GPU, swz128 weights (any row group), bf16 A quantized in the kernel."""
    return cuda and arch == "sm90" and layout != Layout.PLAIN and a_mode == AMode.QUANT


def ws_shared_bytes(bm: int, bn: int, stages: int) -> int:
    """Shared memory of gluon_sm90_ws.py's buffers: ring slots (codes 64 B + scale word 4 B a weight row, raw A 256 B
    a token row) and two operand buffers (bf16 W and quantized A, 256 B a row each)."""
    return stages * (bn * 68 + bm * 256) + 2 * (bn + bm) * 256


def ws_constexprs(cfg: GemmBucket, layout: Layout) -> dict[str, Any]:
    """The constexprs of gluon_sm90_ws.mxfp4_gemm_ws_kernel for a bucket (SPLIT at launch); ValueError naming the
    knob it cannot take."""
    where = f"{OP}: engine gluon_ws"
    if cfg.route != Route.FUSED:
        raise ValueError(f"{where} runs the fused route, not route {cfg.route.value!r}")
    if cfg.BLOCK_K != 128:
        raise ValueError(f"{where}: BLOCK_K must be 128 (one swz128 chunk a tile), not {cfg.BLOCK_K}")
    if cfg.BLOCK_M not in WS_BLOCK_M or cfg.BLOCK_N not in WS_BLOCK_N:
        raise ValueError(f"{where}: BLOCK_M must be one of {WS_BLOCK_M} and BLOCK_N one of {WS_BLOCK_N}, not "
                         f"{cfg.BLOCK_M} x {cfg.BLOCK_N}")  # fmt: skip
    if cfg.num_warps != WS_WARPS:
        raise ValueError(f"{where}: num_warps must be {WS_WARPS} (its MMA warpgroup), not {cfg.num_warps}")
    if cfg.pdl:
        raise ValueError(f"{where}: pdl is the Triton kernel's knob")
    stages = cfg.num_stages or WS_STAGES
    if stages < 2:
        raise ValueError(f"{where}: num_stages must be >= 2 (ring slots), not {stages}")
    if (need := ws_shared_bytes(cfg.BLOCK_M, cfg.BLOCK_N, stages)) > WS_SMEM:
        raise ValueError(f"{where}: num_stages {stages} at {cfg.BLOCK_M} x {cfg.BLOCK_N} needs {need} B of shared "
                         f"memory, over {WS_SMEM}")  # fmt: skip
    return {"BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N, "ROWG": layout.row_group, "MUL1": layout.mul1,
            "STAGES": stages, "RED": red_unroll(cfg.BLOCK_M, cfg.BLOCK_N, WS_WARPS)}  # fmt: skip


def _block_k(cfg: GemmBucket, k: int | None) -> int:
    bk = cfg.BLOCK_K
    while k is not None and bk > 32 and bk > k:
        bk //= 2
    return bk


def route_for(cfg: GemmBucket, n: int, k: int | None) -> Route:
    """The config's route, except "prequant" falls back to "fused" for weights under "fused_below_nk" elements:
    there the quantizer's extra launch costs more than re-quantizing A in every CTA (decode sizes)."""
    if cfg.route == Route.PREQUANT and k is not None and n * k < cfg.fused_below_nk:
        return Route.FUSED
    return cfg.route


def deq_flags(cfg: GemmBucket, block_k: int, asm: bool, dot_scaled: bool, layout: Layout = Layout.PLAIN
              ) -> dict[str, Any]:  # fmt: skip
    """W_DEQ from the config's "deq" (WORDS needs the kernel's BLOCK_K >= 128, else HALVES), or SWZ for swz128
    weights; W_ASM (inline PTX) only where `asm`."""
    if layout != Layout.PLAIN:
        return {"W_DEQ": WDeq.SWZ.value, "W_ASM": asm, "W_MUL1": asm and layout.mul1}
    deq = WDeq.GENERIC if dot_scaled else cfg.deq
    if deq == WDeq.WORDS and block_k < 128:
        deq = WDeq.HALVES
    return {"W_DEQ": deq.value, "W_ASM": deq > 0 and asm, "W_MUL1": False}


def kernel_options(cfg: GemmBucket, arch: str, cuda: bool) -> dict[str, Any]:
    """Launch options; "maxnreg" (CUDA only) caps registers per thread to raise the resident CTAs per SM:
    launch_options drops it on AMD, and off a GPU (the interpreter) it is dropped here."""
    opts = launch_options(cfg.launch_knobs(), arch)
    if not cuda:
        opts.pop("maxnreg", None)
    return opts


# ---------------------------------------------------------------- split-K (host arithmetic on M: graph safe)


def split_k(cfg: GemmBucket, tiles: int, k_tiles: int, sms: int) -> int:
    """Explicit SPLIT_K, else auto. Auto without "CTAS_PER_SM": enough splits for ~2 CTAs per SM. With
    "CTAS_PER_SM" (resident CTAs per SM, from ptxas registers / shared memory, see PERF.md): the split that
    minimises `_sm_cost`, ties to the smaller split. Both keep >= MIN_K_TILES per split, at most 32."""
    s = cfg.SPLIT_K
    cap = min(max(1, k_tiles // cfg.MIN_K_TILES), 32)
    if s <= 0 and cfg.CTAS_PER_SM:
        warps = cfg.num_warps
        sat = max(1, min(cfg.CTAS_PER_SM, max(2, math.ceil(SAT_WARPS / warps))))
        red = red_unroll(cfg.BLOCK_M, cfg.BLOCK_N, warps)
        s = min(range(1, cap + 1), key=lambda c: (_sm_cost(tiles, k_tiles, c, sms, sat, red), c))
    elif s <= 0:
        s = 1 if tiles >= sms else min(math.ceil(2 * sms / tiles), cap)
    s = max(1, min(s, k_tiles))
    return math.ceil(k_tiles / math.ceil(k_tiles / s))  # no empty splits


def red_unroll(bm: int, bn: int, num_warps: int) -> int:
    """Partials the last split loads per round (kernel RED): as many as fit RED_REGS per thread, 1..8."""
    return max(1, min(8, RED_REGS * 32 * num_warps // (bm * bn)))


def _sm_cost(tiles: int, k_tiles: int, splits: int, sms: int, sat: int, red: int) -> float:
    """Time of the busiest SM in K-tile iterations of one CTA: its CTAs share its issue slots and bandwidth (decode
    tiles are issue-bound once `sat` CTAs share an SM; below that a CTA runs no faster, so fewer count as `sat`), plus
    the split-K tail: the last split's atomic (~1) and its reduction rounds (~1.5 each, an L2 round trip)."""
    per_sm = max(math.ceil(tiles * splits / sms), sat)
    tail = 0.0 if splits == 1 else 1 + 1.5 * math.ceil(splits / red)
    return per_sm * math.ceil(k_tiles / splits) + tail


# ---------------------------------------------------------------- the call


def mxfp4_gemm(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, plan: GemmPlan, *,
               a_scale: torch.Tensor | None = None, quant_a: bool = True, out: torch.Tensor | None = None,
               out_dtype: torch.dtype = torch.bfloat16,
               fp8: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """C[M, N] = A . W^T (shapes: the module docstring); `plan` is make_plan(N, K, the weight's layout)'s; `fp8`:
    the weight's resident FP8 copy for the stock_fp8 route (stock_fp8.resident), else it converts per call."""
    m, n, k = a.shape[0], w.shape[0], w.shape[1] * 2
    if (n, k) != (plan.n, plan.k):
        raise ValueError(f"weight [{n}, {k}] does not match the plan {plan}")
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    if a.stride(-1) != 1:
        a = a.contiguous()
    run = plan.launch(m)
    if a_scale is not None:
        return _launch(a.view(torch.uint8), a_scale.view(torch.uint8), w, w_scale, out, run.packed, plan)
    if run.route == Route.STOCK_FP8 and quant_a:  # w4a8: stock quantizes A to FP8 (stock_fp8.py)
        return stock_fp8.gemm_stock_fp8(a, w, w_scale, plan.layout, out, out_dtype, fp8)
    if run.route in (Route.DEQUANT_W, Route.STOCK_FP8) and not plan.amd:  # (w4a16 on a stock bucket: exact W)
        a_eff = quantize(a, qdq=True)[0] if quant_a else a
        return torch.matmul(a_eff, dequantize_weight(w, w_scale, plan.layout).t(), out=out)
    if not quant_a:
        return _launch(a, None, w, w_scale, out, run.w4a16, plan)
    if run.route == Route.FUSED:
        # the Gluon kernel copies bf16 A rows in 16-byte pieces (cp.async): else the bucket's Triton kernel
        triton_a = a.dtype != torch.bfloat16 or a.stride(0) % 8 or a.data_ptr() % 16
        return _launch(a, None, w, w_scale, out, run.quant16 if run.quant16 and triton_a else run.quant, plan)
    q, s = quantize(a, qdq=not plan.amd, pdl=run.quant.pdl)
    return _launch(q, s, w, w_scale, out, run.quant, plan)


def _launch(a: torch.Tensor, a_scale: torch.Tensor | None, w: torch.Tensor, w_scale: torch.Tensor,
            out: torch.Tensor, kern: Kernel, plan: GemmPlan) -> torch.Tensor:  # fmt: skip
    """One GEMM launch: out[M, N] = A . W^T; a is bf16 [M, K] (A_MODE 0/1) or packed [M, K/2] (A_MODE 2)."""
    m, n, k = out.shape[0], plan.n, plan.k
    c = kern.consts
    bm, bn, bk = kern.tile
    num_m, num_n = math.ceil(m / bm), math.ceil(n / bn)
    tiles, k_tiles = num_m * num_n, math.ceil(k / bk)
    s = split_k(kern.cfg, tiles, k_tiles, plan.sms)
    part = torch.empty(tiles * s * bm * bn if s > 1 else 1, dtype=torch.float32, device=out.device)
    cnt = splitk_counters(out.device, tiles) if s > 1 else part
    if kern.engine == Engine.GLUON_WS:
        from speedrun.overlays.mxfp4_gemm.gluon_sm90_ws import mxfp4_gemm_ws_kernel

        mxfp4_gemm_ws_kernel[(num_n, s, num_m)](
            a, w, w_scale, out, part, cnt, m, n, k, s, math.ceil(k_tiles / s),
            a.stride(0), w.stride(0), w_scale.stride(0), out.stride(0), **c, SPLIT=s > 1, **kern.opts,
        )  # fmt: skip
        return out
    sa = a_scale if a_scale is not None else w_scale  # unused pointer in A_MODE 0/1
    grid = (num_n, s, num_m) if c["GROUP"] == 1 else (tiles, s)  # kernels.mxfp4_gemm_kernel's two grid forms
    mxfp4_gemm_kernel[grid](
        a, sa, w, w_scale, out, part, cnt, m, n, k, s, math.ceil(k_tiles / s),
        a.stride(0), sa.stride(0), sa.stride(1), w.stride(0), w_scale.stride(0), out.stride(0),
        **c, SPLIT=s > 1, EVEN_K=k % bk == 0, **kern.opts, **launch_kw(kern.pdl),
    )  # fmt: skip
    return out


# ---------------------------------------------------------------- load-time layouts, quantizer, dequantizer


def relayout_weight(w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str = Layout.SWZ128
                    ) -> tuple[torch.Tensor, torch.Tensor, Layout]:  # fmt: skip
    """Load time: plain MXFP4 -> (swz128 codes, padded scales, layout); K % 128 == 0 (no padding needed). `layout`
    asks for row groups (swz128_g64*; rows that do not fill them stay row-major); the one-multiply decode (mul1) is
    what the scales allow."""
    from speedrun.overlays.mx.layout import swizzle_experts

    if (w.shape[1] * 2) % 128:
        raise NotImplementedError(f"swz128 needs K % 128 == 0, got K={w.shape[1] * 2}")
    g = Layout(layout).row_group if w.shape[0] % Layout(layout).row_group == 0 else 1
    mul1 = int(w_scale.max()) <= 128
    codes, scales = swizzle_experts(w[None], w_scale[None], group=g)  # one weight: a stack of one
    return codes[0], scales[0], Layout.swz(g, mul1)


def plain_weight(w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-layout weight (for the dequantize-then-cuBLAS route and the reference) of a re-laid-out one."""
    if layout == Layout.PLAIN:
        return w, w_scale
    from speedrun.overlays.mx.layout import unswizzle_experts

    return unswizzle_experts(w, w_scale, w.shape[1] * 2, Layout(layout).row_group)


def quantize(a: torch.Tensor, qdq: bool, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton quantizer: bf16 dequant(quant(a)) if qdq, else (packed [M, K/2], scales [M, K/32]); `pdl`: launched
    as a programmatic dependent (it waits before reading a: safe after any kernel)."""
    m, k = a.shape
    bm, bk = 16, 256 if k % 256 == 0 else 32
    if qdq:
        q, s = torch.empty_like(a, dtype=torch.bfloat16), None
    else:
        q = torch.empty(m, k // 2, dtype=torch.uint8, device=a.device)
        s = torch.empty(m, k // 32, dtype=torch.uint8, device=a.device)
    sp = s if s is not None else q
    grid = (math.ceil(m / bm), math.ceil(k / bk))
    mxfp4_quant_kernel[grid](a, q, sp, m, k, a.stride(0), q.stride(0), sp.stride(0), QDQ=qdq, BLOCK_M=bm,
                             BLOCK_K=bk, num_warps=4, **dependent(pdl))  # fmt: skip
    return q, s


def dequantize_weight(w: torch.Tensor, w_scale: torch.Tensor, layout: Layout | str = Layout.PLAIN) -> torch.Tensor:
    """Triton W dequantization to bf16 [N, K] (contiguous codes; scale rows may be padded)."""
    n, k = w.shape[0], w.shape[1] * 2
    w, w_scale = w.contiguous(), w_scale.contiguous()
    out = torch.empty(n, k, dtype=torch.bfloat16, device=w.device)
    swz = layout != Layout.PLAIN
    bn, bk = 32, 256 if k % 256 == 0 else (128 if swz else 32)
    grid = (math.ceil(n / bn), math.ceil(k / bk))
    mxfp4_dequant_kernel[grid](w, w_scale, out, n, k, w_scale.stride(0), BLOCK_N=bn, BLOCK_K=bk, SWZ=swz,
                               ROWG=Layout(layout).row_group, num_warps=4)  # fmt: skip
    return out


def qdq_blocks(blocks: torch.Tensor, asm: bool) -> torch.Tensor:
    """The fused A-load quantizer (kernels.qdq_mxfp4_fast) on bf16 [B, 32] blocks, for checks against the reference
    (two blocks per 64-wide row, 16 rows per program). asm: the sm90 PTX (CUDA only)."""
    x = torch.nn.functional.pad(blocks.reshape(-1), (0, -blocks.numel() % 1024)).view(-1, 64).contiguous()
    out = torch.empty_like(x)
    qdq_rows_kernel[(x.shape[0] // 16,)](x, out, 16, asm)
    return out.reshape(-1)[: blocks.numel()].view_as(blocks)


__all__ = [
    "AMode",
    "Engine",
    "GemmPlan",
    "Layout",
    "Route",
    "make_plan",
    "mxfp4_gemm",
    "plain_weight",
    "relayout_weight",
]
