"""MXFP4 expert MoE (GPT-OSS w4a16, quark DeepSeek-R1 w4a4): a plan built once per layer, one call per step.

    w = swizzled(MoeWeights(w13, w13_scale, w2, w2_scale, ...))     # load time (sm90: swz128 values)
    plan = make_plan(w, device=x.device)                              # every config bucket resolved and validated
    out = fused_moe(x, w, topk_ids, topk_weights, plan)               # every step (ours, or stock FP8 at large M)

Shapes and dtypes (E experts, H hidden, N intermediate, M tokens, K = top-k):
    x             [M, H] bf16
    topk_ids      [M, K] int32 (ids outside [0, E) are skipped: EP);  topk_weights [M, K] float32
    w.w13         [E, 2N, H/2] uint8 (plain) | [E, 2N, Hp/8] int32 (swz128); w13_scale [E, 2N, H/32] uint8 E8M0
    w.w2          [E, H, N/2] uint8 | [E, H, Np/8] int32;                   w2_scale [E, H, N/32] uint8
    w.b13, w.b2   [E, 2N], [E, H] float32 or None
    out           [M, H] bf16
Weights may be padded along hidden (rows of w2, K of w13): only the first H are used.

The plan holds what depends on the weights' format and layout, the arch and the device: per config bucket
(configs/<arch>.json, `<fmt>:tpe<=N`) the knobs, the kernel flags and launch options. The call picks the bucket by
tokens per expert (M * K / E) and launches; CUDA-graph safe (no host sync, every buffer sized from M; expert runs
and the padded length stay on the device). `fused_moe` sends the calls of the buckets whose route is stock_fp8 to
stock SGLang's FP8 block MoE instead (stock_fp8.py: prefill sizes, quark w4a4 on CUDA); `fused_moe_mxfp4` always
runs our kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import triton

from speedrun.overlays.arch import current_arch, is_amd, launch_options, load_configs, pdl_ok, sm_count
from speedrun.overlays.buckets import Buckets
from speedrun.overlays.buffers import splitk_counters
from speedrun.overlays.mx.layout import swizzle_experts, unswizzle_experts
from speedrun.overlays.mxfp4_moe.config import Act, Engine, Fmt, Layout, MoeBucket, Route, check_table
from speedrun.overlays.mxfp4_moe.kernels import (
    combine_kernel,
    moe_gemm1_kernel,
    moe_gemm2_kernel,
    quant_fp8_rows_kernel,
    quant_rows_kernel,
)
from speedrun.overlays.mxfp4_moe.sort import sort_tokens
from speedrun.overlays.mxfp4_moe.stock_fp8 import fused_moe_stock_fp8
from speedrun.overlays.pdl import dependent, launch_kw

OP = "mxfp4_moe"
COMBINE_BLOCK = 1024  # hidden columns per combine program


@dataclass
class MoeWeights:
    """Experts in our layout: w13 rows [gate (N) ; up (N)]; packed E2M1 along K + E8M0 per 32. Values either
    plain (uint8, codes in k order) or, on sm90, mx.layout's swz128 (int32 words, K padded to 128; scales
    padded alike): see `swizzled` / `plain`."""

    w13: torch.Tensor  # uint8 [E, 2N, H/2] | int32 [E, 2N, Hp/8] (swz128)
    w13_scale: torch.Tensor  # uint8 [E, 2N, H/32] (swz128: padded columns)
    w2: torch.Tensor  # uint8 [E, H, N/2] | int32 [E, H, Np/8] (swz128)
    w2_scale: torch.Tensor  # uint8 [E, H, N/32] (swz128: padded columns)
    b13: torch.Tensor | None = None  # fp32 [E, 2N]
    b2: torch.Tensor | None = None  # fp32 [E, H]
    a4: bool = False  # w4a4: activations dynamically quantized to MXFP4
    act: Act = Act.SILU
    alpha: float = 1.702
    limit: float = 7.0
    mul1: bool = False  # swz128 and every weight scale byte <= 128: the one-multiply decode is exact
    row_group: int = 1  # swz128 rows stored in groups of this many (mx.layout group_rows): Layout.row_group
    fp8: tuple[torch.Tensor, ...] | None = None  # resident FP8 experts for the large-M route (stock_fp8.resident)

    @property
    def swz(self) -> bool:
        return self.w13.dtype == torch.int32

    @property
    def layout(self) -> Layout:
        if not self.swz:
            return Layout.PLAIN
        return next(v for v in Layout if v.swz and v.row_group == self.row_group)

    @property
    def fmt(self) -> Fmt:
        return Fmt.W4A4 if self.a4 else Fmt.W4A16

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def inter(self) -> int:
        return self.w13.shape[1] // 2

    @property
    def hidden(self) -> int:
        return self.w2.shape[1]


def swizzled(w: MoeWeights, chunk: int = 8, layout: Layout = Layout.SWZ) -> MoeWeights:
    """The same experts with values in a swz128 `layout` (load time; `chunk` experts at a time bounds the
    temporaries). ValueError for swz128 experts in another layout, or rows that do not fill the row groups."""
    if w.swz:
        if w.layout != layout:
            raise ValueError(f"experts are in {w.layout}; convert plain experts to {layout}")
        return w
    g = layout.row_group
    w13, s13 = swizzle_experts(w.w13, w.w13_scale, chunk, g)
    w2, s2 = swizzle_experts(w.w2, w.w2_scale, chunk, g)
    mul1 = bool(max(w.w13_scale.max().item(), w.w2_scale.max().item()) <= 128)  # load time: a sync is fine
    return replace(w, w13=w13.view(torch.int32), w13_scale=s13, w2=w2.view(torch.int32), w2_scale=s2, mul1=mul1,
                   row_group=g)  # fmt: skip


def plain(w: MoeWeights, hidden: int, inter: int) -> MoeWeights:
    """Plain-layout copy of swz128 experts (reference checks; K of w13 = hidden, K of w2 = inter)."""
    if not w.swz:
        return w
    w13, s13 = unswizzle_experts(w.w13, w.w13_scale, hidden, w.row_group)
    w2, s2 = unswizzle_experts(w.w2, w.w2_scale, inter, w.row_group)
    return replace(w, w13=w13, w13_scale=s13, w2=w2, w2_scale=s2, mul1=False, row_group=1)


@functools.cache
def table(arch: str) -> dict[str, MoeBucket]:
    """The arch's validated buckets by key."""
    return check_table(load_configs(OP, arch), f"{OP} {arch}")


@functools.cache
def _buckets(arch: str, fmt: str) -> Buckets:
    return Buckets.of(table(arch), "tpe", fmt)


def bucket_key(fmt: str, num_tokens: int, topk: int, num_experts: int, arch: str | None = None) -> str:
    """The config bucket of a call: tokens per expert = num_tokens * topk / num_experts."""
    return _buckets(arch or _arch(), fmt).pick(num_tokens * topk / max(num_experts, 1))


@functools.cache
def _arch() -> str:
    return current_arch()


def pick_config(w: MoeWeights, num_tokens: int, topk: int, arch: str | None = None) -> MoeBucket:
    arch = arch or _arch()
    return table(arch)[bucket_key(w.fmt, num_tokens, topk, w.num_experts, arch)]


@dataclass(frozen=True)
class Launch:
    """One bucket, resolved for one plan: its knobs, the kernels' mode flags, K tiles and launch options."""

    cfg: MoeBucket
    dot_scaled: bool
    flags: dict[str, Any]
    block_k1: int
    block_k2: int
    opts1: dict[str, Any]
    opts2: dict[str, Any]
    stock_fp8: bool = False  # this bucket's calls go to stock's FP8 block MoE (`fused_moe`)
    pdl: bool = False  # the bucket's pdl where the device has PDL (overlays/pdl.py)
    ws: tuple[dict[str, Any], dict[str, Any]] | None = None  # engine gluon_ws: GEMM1's and GEMM2's constexprs


@dataclass(frozen=True)
class MoePlan:
    """What one layer's experts run with: build it with `make_plan` (load time)."""

    fmt: Fmt
    layout: Layout
    num_experts: int
    arch: str
    device: torch.device
    buckets: Buckets | None  # None: one forced config for every call (sweeps, tests)
    launches: dict[str, Launch] = field(repr=False)

    def launch(self, num_tokens: int, topk: int) -> Launch:
        if self.buckets is None:
            return self.launches["forced"]
        return self.launches[self.buckets.pick(num_tokens * topk / max(self.num_experts, 1))]

    @property
    def stock(self) -> bool:
        """Whether some calls go to stock's FP8 block MoE (then its scratch is reserved at load time)."""
        return any(run.stock_fp8 for run in self.launches.values())

    def stock_above(self, topk: int) -> int | None:
        """The M past which calls go to stock's FP8 block MoE (stock buckets come last), None if none do."""
        if self.buckets is None or not self.stock:
            return None
        ours = [limit for limit, key in self.buckets.upto if not self.launches[key].stock_fp8]
        return int(max(ours, default=0) * self.num_experts // topk)

    def route_line(self, topk: int) -> str:
        """How this plan routes calls, for the per-process report."""
        m = self.stock_above(topk)
        ws = [key for key, run in self.launches.items() if run.ws is not None]
        tail = f"; warp-specialized Gluon GEMMs in {', '.join(ws)}" if ws else ""
        if m is None:
            return f"{self.fmt} E={self.num_experts} top-{topk}: speedrun MXFP4 kernels at every M{tail}"
        return (
            f"{self.fmt} E={self.num_experts} top-{topk}: M <= {m}: speedrun MXFP4 kernels; M > {m}: stock FP8 "
            f"block fused MoE (experts converted to FP8 per call, FP8 activations){tail}"
        )


def make_plan(w: MoeWeights, *, device: torch.device | str | None = None, arch: str | None = None,
              config: MoeBucket | Mapping[str, Any] | None = None) -> MoePlan:  # fmt: skip
    """Resolve and validate every bucket of the arch's table for these weights (format, layout) once; `config`
    forces one bucket's knobs for every call. ValueError for a bad field or a config the layout cannot run."""
    arch = arch or _arch()
    device = torch.device(device) if device is not None else w.w13.device
    cuda = device.type == "cuda" and torch.version.hip is None
    if config is not None:
        launches = {"forced": resolve(MoeBucket.checked(config, f"{OP} config"), w.swz, w.mul1, arch, cuda)}
        buckets = None
    else:
        buckets = _buckets(arch, w.fmt)
        keys = [k for _, k in buckets.upto] + ([buckets.above] if buckets.above else [])
        launches = {k: resolve(table(arch)[k], w.swz, w.mul1, arch, cuda) for k in keys}
        launches = _routes(launches, keys, w, arch)
    launches = {key: _scale_words(run, w, key, config is not None) for key, run in launches.items()}
    launches = {key: _row_groups(run, w, key) for key, run in launches.items()}
    launches = {key: _a8(run, w, key, config is not None) for key, run in launches.items()}
    launches = {key: _ws(run, w, key, arch, cuda) for key, run in launches.items()}
    for key, run in launches.items():  # the grouped GEMM2 loop has no K tail (kernels.moe_gemm2_kernel)
        if run.cfg.group2 > 1 and w.inter % run.block_k2:
            if config is not None:  # a forced config says what to run: it cannot run
                raise ValueError(f"{OP} {key}: group2 {run.cfg.group2} needs the intermediate size ({w.inter}) to "
                                 f"be a multiple of GEMM2's K tile ({run.block_k2}); expected group2 1")  # fmt: skip
            # A table bucket serves every model: these experts take one N tile per program (same result).
            launches[key] = replace(run, cfg=run.cfg.replace(group2=1))
    return MoePlan(w.fmt, w.layout, w.num_experts, arch, device, buckets, launches)


def scale_words_fit(run: Launch, hidden: int, inter: int) -> bool:
    """Whether a launch can load the activation scales as words (MoeBucket.a_scale_words): the dequant path, and
    hidden, intermediate size and both K tiles multiples of 128 (whole int32 words per row and K tile)."""
    return not run.dot_scaled and all(v % 128 == 0 for v in (hidden, inter, run.block_k1, run.block_k2))


def _scale_words(run: Launch, w: MoeWeights, key: str, forced: bool) -> Launch:
    """The launch with A_SW where its bucket asks for it (MoeBucket.a_scale_words), the experts are w4a4 codes
    and `scale_words_fit`. Otherwise the byte loads (same values); a forced config that cannot have it is a
    ValueError naming why."""
    cfg = run.cfg
    if not cfg.a_scale_words or not w.a4 or cfg.a_qdq:
        return run
    if not scale_words_fit(run, w.hidden, w.inter):
        sizes = (w.hidden, w.inter, run.block_k1, run.block_k2)
        if forced:
            raise ValueError(f"{OP} {key}: a_scale_words needs the dequant path and hidden, intermediate and K tiles "
                             f"that are multiples of 128 (got dot_scaled={cfg.dot_scaled}, {sizes})")  # fmt: skip
        return run
    return replace(run, flags={**run.flags, "A_SW": True})


def _row_groups(run: Launch, w: MoeWeights, key: str) -> Launch:
    """The launch with W_ROWG for experts whose swz128 rows are grouped; ValueError when a GEMM's N tile does not
    hold whole groups (a tile would read other tiles' rows)."""
    g = w.row_group
    if g == 1:
        return run
    for name, bn in (("BLOCK_N1", run.cfg.BLOCK_N1), ("BLOCK_N2", run.cfg.BLOCK_N2)):
        if bn % g:
            raise ValueError(f"{OP} {key}: {name} {bn} is not a multiple of the {w.layout} row group ({g}); use "
                             f"experts in {Layout.SWZ} or a tile of a multiple of {g} rows")  # fmt: skip
    return replace(run, flags={**run.flags, "W_ROWG": g})


def _a8(run: Launch, w: MoeWeights, key: str, forced: bool) -> Launch:
    """The launch with A8 for a bucket asking for the w4a8 path (MoeBucket.a8). What that path needs and the bucket
    or the experts lack: a ValueError naming it for a forced config; a table bucket (it serves every model and
    layout) runs such experts on the w4a4 codes path instead (its knobs unchanged but a8)."""
    cfg = run.cfg
    if not cfg.a8:
        return run
    need = {"w4a4 experts": w.a4, "swz128 experts": w.swz, "swap false": not cfg.swap, "a_qdq false": not cfg.a_qdq,
            "K tiles of 128": run.block_k1 == run.block_k2 == 128, "BLOCK_N1 128": cfg.BLOCK_N1 == 128,
            "split1 1": cfg.split1 == 1, "group2 1": cfg.group2 == 1,
            "intermediate and hidden sizes multiples of 128": w.inter % 128 == 0 and w.hidden % 128 == 0}  # fmt: skip
    if missing := [what for what, ok in need.items() if not ok]:
        if not forced:
            return replace(run, cfg=cfg.replace(a8=False))
        raise ValueError(f"{OP} {key}: a8 (the w4a8 path) needs {', '.join(missing)}")
    return replace(run, flags={**run.flags, "A8": True})


WS_BLOCK_M = (16, 32, 64, 128)
WS_BLOCK_N1 = (64,)  # weight rows are the wgmma's M side: 64 a warpgroup instruction (GEMM1: gate and up, 128)
WS_BLOCK_N2 = (64, 128)
WS_SMEM = 227 * 1024 - 2048  # less barriers and the compiler's own bookkeeping (AOT: ~1.2 KB)


def ws_shared_bytes(bm: int, bn: int, rows: int, stages: int) -> int:
    """Shared memory of gluon_sm90_ws.py for one GEMM: ring slots (codes 64 B and a scale word a weight row of the
    `rows` a step reads, 256 B an activation row), two bf16 weight buffers, and the epilogue's layout conversion of
    a [bm, bn] fp32 tile (AOT at BM 16-64: bm x bn x 4 or less)."""
    return stages * (rows * 68 + bm * 256) + 2 * rows * 256 + bm * bn * 4


def _ws(run: Launch, w: MoeWeights, key: str, arch: str, cuda: bool) -> Launch:
    """The launch with gluon_sm90_ws.py's constexprs for a gluon_ws bucket where that kernel runs (sm90 GPU, swz128
    experts, bf16 activations: w4a16, or w4a4 with a_qdq); its knobs are checked everywhere (ValueError naming the
    first it cannot take)."""
    cfg = run.cfg
    if cfg.engine != Engine.GLUON_WS:
        return run
    where = f"{OP} {key}: engine gluon_ws"
    if cfg.BLOCK_M not in WS_BLOCK_M or cfg.BLOCK_N1 not in WS_BLOCK_N1 or cfg.BLOCK_N2 not in WS_BLOCK_N2:
        raise ValueError(f"{where}: BLOCK_M must be one of {WS_BLOCK_M}, BLOCK_N1 of {WS_BLOCK_N1}, BLOCK_N2 of "
                         f"{WS_BLOCK_N2}; got {cfg.BLOCK_M}, {cfg.BLOCK_N1}, {cfg.BLOCK_N2}")  # fmt: skip
    if cfg.a8 or cfg.dot_scaled:
        raise ValueError(f"{where} multiplies bf16 operands: expected a8 and dot_scaled false")
    if min(cfg.stages1, cfg.stages2) < 2:  # one slot: its loader would wait for the MMA that waits for its data
        raise ValueError(f"{where}: stages1 and stages2 must be >= 2 (ring slots), got {cfg.stages1}, {cfg.stages2}")
    for name, bn, rows, stages in (("stages1", cfg.BLOCK_N1, 2 * cfg.BLOCK_N1, cfg.stages1),
                                   ("stages2", cfg.BLOCK_N2, cfg.BLOCK_N2, cfg.stages2)):  # fmt: skip
        if (need := ws_shared_bytes(cfg.BLOCK_M, bn, rows, stages)) > WS_SMEM:
            raise ValueError(f"{where}: {name} {stages} needs {need} B of shared memory, over {WS_SMEM}")
    if not (cuda and arch == "sm90" and w.swz and (not w.a4 or cfg.a_qdq)):
        return run
    return replace(run, ws=ws_constexprs(cfg, w.act, w.a4, w.b13 is not None, w.row_group, w.mul1, run.pdl))


def ws_constexprs(cfg: MoeBucket, act: Act, a4: bool, bias: bool, row_group: int, mul1: bool,
                  pdl: bool) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """GEMM1's and GEMM2's constexprs of gluon_sm90_ws.moe_gemm_ws_kernel for a checked gluon_ws bucket (TOPK at
    launch): experts with `act`, w4a4 (h re-quantized to the MXFP4 grid) or not, biases (GPT-OSS) or not."""
    common = {"BLOCK_M": cfg.BLOCK_M, "ROWG": row_group, "MUL1": mul1 and cfg.mul1, "PDL": pdl, "HAS_BIAS": bias,
              "ACT": int(act)}  # fmt: skip
    return ({**common, "GEMM1": True, "BLOCK_N": cfg.BLOCK_N1, "STAGES": cfg.stages1, "OUT_QDQ": a4},
            {**common, "GEMM1": False, "BLOCK_N": cfg.BLOCK_N2, "STAGES": cfg.stages2, "OUT_QDQ": False})  # fmt: skip


def stock_route_ok(w: MoeWeights, arch: str) -> bool:
    """Whether stock_fp8 buckets route these experts to stock: quark w4a4 SiLU experts without biases on a CUDA
    arch. ROCm (gfx*, or a HIP torch) keeps our kernels (its large-M path is aiter); the CPU interpreter too."""
    cuda_arch = arch.startswith("sm") and not is_amd(arch) and torch.version.hip is None
    return cuda_arch and w.fmt == Fmt.W4A4 and w.act == Act.SILU and w.b13 is None and w.b2 is None


def _routes(launches: dict[str, Launch], keys: list[str], w: MoeWeights, arch: str) -> dict[str, Launch]:
    """The launches with each bucket's route where `stock_route_ok`; ValueError when a stock bucket precedes one
    of ours (the route must be one threshold: what the report says)."""
    if not stock_route_ok(w, arch):
        return launches
    stock = [launches[k].cfg.route == Route.STOCK_FP8 for k in keys]
    if stock != sorted(stock):
        raise ValueError(f"{OP} {arch}: route stock_fp8 buckets must come after every `ours` one ({keys})")
    return {k: replace(run, stock_fp8=s) for (k, run), s in zip(launches.items(), stock, strict=True)}


def resolve(cfg: MoeBucket, swz: bool, mul1: bool, arch: str, cuda: bool) -> Launch:
    """One bucket as a launch gets it, for weights in swz128 (`swz`, `mul1`: see MoeWeights) or plain layout;
    `cuda`: a CUDA device (inline PTX allowed; False for ROCm and the CPU interpreter). The AOT compile specs
    (eval/kernels/mxfp4_moe_compile.py) build theirs here too. dot_scaled on sm90: Triton upcasts e2m1 in
    registers (LUT) for us. ValueError for b_regs on an AMD arch (a wgmma knob)."""
    if cfg.b_regs and is_amd(arch):
        raise ValueError(f"{OP} {arch}: b_regs is an sm90 knob (wgmma); expected false on AMD")
    if cfg.a_qdq and cfg.dot_scaled:
        raise ValueError(f"{OP} {arch}: a_qdq hands bf16 activations to the dequant path; expected dot_scaled false")
    return Launch(cfg, cfg.dot_scaled, sm90_flags(cfg, cuda, swz, mul1), swz_block_k(cfg.BLOCK_K1, swz),
                  swz_block_k(cfg.BLOCK_K2, swz), _opts(cfg, cfg.warps1, cfg.stages1, arch),
                  _opts(cfg, cfg.warps2, cfg.stages2, arch), pdl=cfg.pdl and pdl_ok(arch, cuda))  # fmt: skip


def _opts(cfg: MoeBucket, warps: int, stages: int, arch: str) -> dict[str, Any]:
    """One GEMM's launch options: its warps and stages, the bucket's AMD knobs."""
    return launch_options({**cfg.launch_knobs(), "num_warps": warps, "num_stages": stages}, arch)


def sm90_flags(cfg: MoeBucket, cuda: bool, swz: bool = False, mul1: bool = False) -> dict[str, Any]:
    """SWAP / W_DEQ / W_ASM (/ W_SWZ / W_MUL1 / B_REGS for swz128 weights) from the bucket's swap, deq, mul1 and
    b_regs (dequant path only; PTX only on CUDA, so the interpreter ignores b_regs). The kernels' defaults (all
    off) stand for the flags left out; W_DEQ is the enum's int (a constexpr)."""
    if swz:
        if cfg.dot_scaled:
            raise ValueError("dot_scaled needs plain-layout weights (these are swz128)")
        flags = {"SWAP": cfg.swap, "W_DEQ": 0, "W_ASM": cuda, "W_SWZ": True, "W_MUL1": cuda and mul1 and cfg.mul1}
        return {**flags, "B_REGS": True} if cuda and cfg.b_regs else flags  # off: the shipped kernels' constants
    if cfg.dot_scaled:
        return {}
    return {"SWAP": cfg.swap, "W_DEQ": cfg.deq.value, "W_ASM": cfg.deq.value > 0 and cuda}


def swz_block_k(bk: int, swz: bool) -> int:
    """swz128 tiles hold whole 128-code chunks: BLOCK_K rounded up to a multiple of 128."""
    return -(-bk // 128) * 128 if swz else bk


def gemm1_split(cfg: MoeBucket, max_ctas: int, k_tiles: int, device: torch.device) -> int:
    """GEMM1 split-K: the bucket's split1 (0 = auto: ~2 CTAs per SM when the active experts x N tiles, an upper
    bound known from M alone, fill less than one wave; >= 4 K tiles per split). Host-only arithmetic: graph safe."""
    want = cfg.split1
    if want == 0:
        sms = sm_count(device)
        want = 1 if max_ctas >= sms else min(-(-2 * sms // max_ctas), k_tiles // 4)
    return max(1, min(want, k_tiles, 8))


# pdl=True below launches the kernel as a programmatic dependent: only right after the sort of `fused_moe_mxfp4`
# (overlays/pdl.py's rules: x must be complete when the kernel before it started).


def _quant_launch(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, qdq: bool, pdl: bool) -> None:
    m, k = x.shape
    br, bk = 4, 256
    grid = (triton.cdiv(m, br), triton.cdiv(k, bk))
    quant_rows_kernel[grid](x, q, s, m, k, x.stride(0), q.stride(0), s.stride(0), BLOCK_R=br, BLOCK_K=bk, QDQ=qdq,
                            **dependent(pdl))  # fmt: skip


def quant_fp8_rows(x: torch.Tensor, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 [M, K] (K % 128 == 0) -> e4m3 [M, K] + fp32 scales [M, K/128] (the w4a8 path's activations)."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(m, k // 128, dtype=torch.float32, device=x.device)
    br = 16
    quant_fp8_rows_kernel[(triton.cdiv(m, br), k // 128)](x, q, s, m, x.stride(0), q.stride(0), s.stride(0), BLOCK_R=br,
                                                          **dependent(pdl))  # fmt: skip
    return q, s


def quant_rows(x: torch.Tensor, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 [M, K] -> MXFP4 (packed [M, K/2], E8M0 [M, K/32]) with the kernels' quantizer."""
    m, k = x.shape
    q = torch.empty(m, k // 2, dtype=torch.uint8, device=x.device)
    s = torch.empty(m, k // 32, dtype=torch.uint8, device=x.device)
    _quant_launch(x, q, s, qdq=False, pdl=pdl)
    return q, s


def qdq_rows(x: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """bf16 [M, K] -> bf16 [M, K] equal to dequant(quant_rows(x)): what a w4a4 GEMM multiplies (MoeBucket.a_qdq)."""
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    _quant_launch(x, out, out, qdq=True, pdl=pdl)  # the scales' tensor is unused: the values carry them
    return out


PF_CHUNKS = 4  # 128-code chunks of its w2 rows a GEMM2 program prefetches under PDL (its pipeline's first tiles)


def gemm2_prefetch(inter: int) -> dict[str, int]:
    """GEMM2's PF_CHUNKS under PDL for an intermediate size (GEMM2's K): DeepSeek's shard (256) whole, GPT-OSS's
    (2880) its first 512 codes (round 10: prefetching whole 94 KB programs made GPT-OSS 3-10% slower)."""
    return {"PF_CHUNKS": min(-(-inter // 128), PF_CHUNKS)}


def fused_moe_mxfp4(
    x: torch.Tensor,
    w: MoeWeights,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    plan: MoePlan,
    routed_scaling_factor: float = 1.0,
) -> torch.Tensor:
    """sum_k topk_weights[:, k] * expert_{topk_ids[:, k]}(x) * routed_scaling_factor -> [M, H] bf16 (shapes: the
    module docstring); `plan` is make_plan(w)'s."""
    if (w.fmt, w.layout, w.num_experts) != (plan.fmt, plan.layout, plan.num_experts):
        raise ValueError(f"weights ({w.fmt}, {w.layout}, E={w.num_experts}) do not match the plan {plan}")
    m, topk = topk_ids.shape
    run = plan.launch(m, topk)
    cfg, dot_scaled, flags, pdl = run.cfg, run.dot_scaled, run.flags, run.pdl
    num, n, h = m * topk, w.inter, x.shape[1]  # weights may carry hidden padding (aiter layouts)
    topk_weights = topk_weights.contiguous()  # before the chain: a copy here is a plain launch
    s = sort_tokens(topk_ids, w.num_experts, cfg.BLOCK_M, pdl=pdl)
    dev = x.device
    qdq = w.a4 and cfg.a_qdq  # w4a4 activations as bf16 on the MXFP4 grid (MoeBucket.a_qdq)
    a8 = bool(flags.get("A8"))  # the w4a8 path (MoeBucket.a8): e4m3 activations with per-128 scales
    a4 = w.a4 and not qdq and not a8  # the kernels see MXFP4 activation codes
    if a8:
        a, a_s = quant_fp8_rows(x, pdl)
        inter = torch.empty(num, n, dtype=torch.float8_e4m3fn, device=dev)
        inter_s = torch.empty(num, n // 128, dtype=torch.float32, device=dev)
    elif a4:
        a, a_s = quant_rows(x, pdl)
        inter = torch.empty(num, n // 2, dtype=torch.uint8, device=dev)
        inter_s = torch.empty(num, n // 32, dtype=torch.uint8, device=dev)
    else:
        a = qdq_rows(x, pdl) if qdq else x
        a_s = a  # unused for bf16 activations
        inter = torch.empty(num, n, dtype=torch.bfloat16, device=dev)
        inter_s = inter
    b13 = w.b13 if w.b13 is not None else w.w13_scale
    n_tiles = triton.cdiv(n, cfg.BLOCK_N1)
    # gluon_ws takes bf16 activation rows it can copy in 16-byte pieces (else, e.g. fp16 or an odd view: Triton's)
    ws = run.ws is not None and a.dtype == torch.bfloat16 and _rows16(a)
    k_step = 128 if ws else run.block_k1  # gluon_ws: K steps of one swz128 chunk
    split = gemm1_split(cfg, min(w.num_experts, num) * n_tiles, triton.cdiv(h, k_step), dev)
    y_dtype = torch.bfloat16 if cfg.y_bf16 else torch.float32  # MoeBucket.y_bf16
    y = torch.empty(num, h, dtype=y_dtype, device=dev)  # GEMM2 writes every routed slot's row
    if split > 1:
        part = torch.empty(s.max_blocks * n_tiles * split * 2 * cfg.BLOCK_M * cfg.BLOCK_N1, dtype=torch.float32,
                           device=dev)  # fmt: skip
        cnt = splitk_counters(dev, s.max_blocks * n_tiles)
    else:  # unused by the kernel: any tensor of the right dtype, no allocation
        part, cnt = y, s.num_padded
    b2 = w.b2 if w.b2 is not None else w.w2_scale
    if ws:
        _ws_gemms(a, inter, y, w, b13, b2, topk_weights, s, part, cnt, num, n, h, n_tiles, split, topk, run)
    else:
        _triton_gemms(a, a_s, inter, inter_s, y, w, b13, b2, topk_weights, s, part, cnt, num, n, h, n_tiles, split,
                      topk, a4, qdq, dot_scaled, run)  # fmt: skip
    out = torch.empty(m, h, dtype=torch.bfloat16, device=dev)
    combine_kernel[(m, triton.cdiv(h, COMBINE_BLOCK))](y, s.ids, out, h, w.num_experts, y.stride(0), out.stride(0),
                                                       float(routed_scaling_factor), TOPK=topk,
                                                       BLOCK_H=COMBINE_BLOCK, **dependent(pdl),
                                                       num_warps=4)  # fmt: skip
    return out


def _rows16(a: torch.Tensor) -> bool:
    """Whether a's rows start 16-byte aligned and are dense: gluon_ws's cp.async copies need it to compile."""
    return a.stride(-1) == 1 and (a.stride(0) * a.element_size()) % 16 == 0 and a.data_ptr() % 16 == 0


def _ws_gemms(a, inter, y, w: MoeWeights, b13, b2, topk_weights, s, part, cnt, num: int, n: int, h: int,
              n_tiles: int, split: int, topk: int, run: Launch) -> None:  # fmt: skip
    """GEMM1 and GEMM2 as gluon_sm90_ws.py's persistent kernel: at most one CTA an SM each, walking the items."""
    from speedrun.overlays.mxfp4_moe.gluon_sm90_ws import moe_gemm_ws_kernel

    sms = sm_count(a.device)
    ws1, ws2 = run.ws
    alpha, limit = float(w.alpha), float(w.limit)
    moe_gemm_ws_kernel[(min(s.max_blocks * n_tiles * split, sms),)](
        a, w.w13, w.w13_scale, b13, topk_weights, inter, part, cnt, s.sorted_ids, s.expert_ids, s.num_padded,
        num, n, h, a.stride(0), w.w13.stride(0), w.w13.stride(1), w.w13_scale.stride(0), w.w13_scale.stride(1),
        b13.stride(0), inter.stride(0), alpha, limit, n_tiles, split, TOPK=topk, **ws1, num_warps=4,
        **launch_kw(run.pdl),  # its PDL constexpr is in ws1 (ws_constexprs: the AOT specs build theirs there too)
    )  # fmt: skip
    n_tiles2 = triton.cdiv(h, ws2["BLOCK_N"])
    moe_gemm_ws_kernel[(min(s.max_blocks * n_tiles2, sms),)](
        inter, w.w2, w.w2_scale, b2, topk_weights, y, y, s.num_padded, s.sorted_ids, s.expert_ids, s.num_padded,
        num, h, n, inter.stride(0), w.w2.stride(0), w.w2.stride(1), w.w2_scale.stride(0), w.w2_scale.stride(1),
        b2.stride(0), y.stride(0), alpha, limit, n_tiles2, 1, TOPK=topk, **ws2, num_warps=4, **launch_kw(run.pdl),
    )  # fmt: skip


def _triton_gemms(a, a_s, inter, inter_s, y, w: MoeWeights, b13, b2, topk_weights, s, part, cnt, num: int, n: int,
                  h: int, n_tiles: int, split: int, topk: int, a4: bool, qdq: bool, dot_scaled: bool,
                  run: Launch) -> None:  # fmt: skip
    """GEMM1 and GEMM2 as kernels.py's grouped GEMMs."""
    cfg, flags, pdl, bk1, bk2 = run.cfg, run.flags, run.pdl, run.block_k1, run.block_k2
    grid1 = (s.max_blocks, n_tiles, split)
    moe_gemm1_kernel[grid1](
        a, a_s, w.w13, w.w13_scale, b13, inter, inter_s, s.sorted_ids, s.expert_ids, s.num_padded,
        num, n, h, a.stride(0), a_s.stride(0), w.w13.stride(0), w.w13.stride(1), w.w13_scale.stride(0),
        w.w13_scale.stride(1), b13.stride(0), inter.stride(0), inter_s.stride(0), float(w.alpha), float(w.limit),
        TOPK=topk, A_FP4=a4, OUT_FP4=a4, ACT=int(w.act), HAS_BIAS=w.b13 is not None, DOT_SCALED=dot_scaled,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N1, BLOCK_K=bk1, **run.opts1, **flags,
        part_ptr=part, cnt_ptr=cnt, SPLIT_K=split, EVEN_N=n % cfg.BLOCK_N1 == 0, OUT_QDQ=qdq,
        **dependent(pdl),
    )  # fmt: skip
    grid2 = (s.max_blocks, triton.cdiv(triton.cdiv(h, cfg.BLOCK_N2), cfg.group2))
    moe_gemm2_kernel[grid2](
        inter, inter_s, w.w2, w.w2_scale, b2, topk_weights, y, s.sorted_ids, s.expert_ids, s.num_padded,
        num, h, n, inter.stride(0), inter_s.stride(0), w.w2.stride(0), w.w2.stride(1), w.w2_scale.stride(0),
        w.w2_scale.stride(1), b2.stride(0), y.stride(0),
        TOPK=topk, A_FP4=a4, HAS_BIAS=w.b2 is not None, DOT_SCALED=dot_scaled,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N2, BLOCK_K=bk2, **run.opts2, **flags,
        EVEN_N=h % (cfg.BLOCK_N2 * cfg.group2) == 0, N_GROUP=cfg.group2,
        **dependent(pdl), **(gemm2_prefetch(n) if pdl else {}),
    )  # fmt: skip


def fused_moe(
    x: torch.Tensor,
    w: MoeWeights,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    plan: MoePlan,
    routed_scaling_factor: float = 1.0,
    num_experts: int | None = None,
) -> torch.Tensor:
    """The serving dispatch: `fused_moe_mxfp4`, or for the plan's stock_fp8 buckets stock's FP8 block MoE on the
    experts converted per call (stock_fp8.py; `num_experts`: the global count under EP)."""
    if plan.launch(*topk_ids.shape).stock_fp8:
        return fused_moe_stock_fp8(x, w, topk_ids, topk_weights, routed_scaling_factor, num_experts)
    return fused_moe_mxfp4(x, w, topk_ids, topk_weights, plan, routed_scaling_factor)


__all__ = ["Act", "MoePlan", "MoeWeights", "fused_moe", "fused_moe_mxfp4", "make_plan", "plain", "quant_fp8_rows",
           "quant_rows", "swizzled"]  # fmt: skip
