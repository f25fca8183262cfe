"""The typed schema of configs/<arch>.json: one `<fmt>:tpe<=N` / `<fmt>:tpe>N` bucket per entry (overlays/buckets.py
grammar; fmt w4a16 | w4a4, tpe = routed tokens per expert), its knobs, and the enums of the mode knobs. Tables are
validated once when loaded into these frozen models; the plan holds them (constexprs come from their attributes)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import Field

from speedrun.overlays.buckets import Knobs, parse_table


class Act(IntEnum):
    """GEMM1 epilogue (the kernels' ACT constexpr)."""

    SILU = 0  # silu(gate) * up (DeepSeek)
    SWIGLU_OAI = 1  # clamped gate * sigmoid(alpha * gate) * (up + 1) (GPT-OSS)


class WDeq(IntEnum):
    """How the dequant path (no tl.dot_scaled) decodes plain-layout weights (the kernels' W_DEQ constexpr)."""

    LUT = 0  # mx.mxfp4_to_bf16, codes interleaved back to k order
    HALVES = 2  # mx.mxfp4_halves_bf16: even/odd-K halves, two dots (inline PTX on CUDA)


class Fmt(StrEnum):
    W4A16 = "w4a16"  # bf16 activations (GPT-OSS)
    W4A4 = "w4a4"  # activations quantized to MXFP4 per row (quark DeepSeek-R1)


class Layout(StrEnum):
    """Expert value layout: mx.layout's swz128 (int32 words, 16-byte fragment loads; sm90), the same with rows in
    groups of 16 or 64 (a tile's K step reads 1 or 4 KiB contiguous per group: mx.layout `group_rows`), or plain."""

    SWZ = "swz"
    SWZ_G16 = "swzg16"
    SWZ_G64 = "swzg64"
    PLAIN = "plain"

    @property
    def row_group(self) -> int:
        """Rows per group of a swz128 layout (1: row-major; plain has none)."""
        return {Layout.SWZ_G16: 16, Layout.SWZ_G64: 64}.get(self, 1)

    @property
    def swz(self) -> bool:
        return self != Layout.PLAIN


# What the CUDA hook stores experts in: rows in groups of 64 (round 9 sweep, H100: 3-7% faster than row-major swz128
# on the DeepSeek shard at M 1-128 with GEMM1's 256-deep K tile, 7-11% on GPT-OSS at M 4-512; 70-75% of HBM at M
# 64-128 on both). Every sm90 bucket's N tiles hold whole groups (the plan checks).
CUDA_LAYOUT = Layout.SWZ_G64


class Engine(StrEnum):
    """Which kernels run a bucket's two GEMMs: the Triton ones (kernels.py: every arch and path), or the
    warp-specialized persistent Gluon kernel (gluon_sm90_ws.py: sm90, swz128 experts, bf16 activations, i.e. w4a16
    or w4a4 with a_qdq; elsewhere the bucket runs the Triton kernels, and the plan's report says so)."""

    TRITON = "triton"
    GLUON_WS = "gluon_ws"


class Route(StrEnum):
    """Who serves a bucket's calls: our kernels, or (quark w4a4 on CUDA only) stock SGLang's FP8 block fused MoE
    on the experts converted to FP8 per call (stock_fp8.py). The knobs of a stock bucket still describe our
    kernels there: the bench and `fused_moe_mxfp4` run them."""

    OURS = "ours"
    STOCK_FP8 = "stock_fp8"


class MoeBucket(Knobs):
    """One `<fmt>:tpe<=N` bucket: GEMM1 (gate + up) and GEMM2 tiles, the dequant mode knobs, AMD launch knobs."""

    BLOCK_M: int = Field(ge=16)
    BLOCK_N1: int = Field(ge=16)
    BLOCK_K1: int = Field(ge=32)
    warps1: int = Field(ge=1)
    stages1: int = Field(ge=1)
    BLOCK_N2: int = Field(ge=16)
    BLOCK_K2: int = Field(ge=32)
    warps2: int = Field(ge=1)
    stages2: int = Field(ge=1)
    dot_scaled: bool = False  # tl.dot_scaled on packed operands (gfx950: v_mfma_scale); else dequant + tl.dot
    swap: bool = False  # sm90: acc^T = W @ A^T (weights on the MMA's M side)
    deq: WDeq = WDeq.LUT
    split1: int = Field(1, ge=0)  # GEMM1 split-K; 0: auto (see api.gemm1_split)
    mul1: bool = True  # swz128: one multiply per decoded pair when every scale byte allows it
    b_regs: bool = False  # sm90 swz128 w4a16: activation tile via registers in the K loop (wgmma back to back)
    # w4a4 on the dequant path: x and GEMM1's output reach the GEMMs as bf16 on the MXFP4 grid (quantized and
    # dequantized once per row) instead of codes each CTA decodes; same values, the w4a16 load path. Ignored
    # for bf16 activations; not with dot_scaled (gfx950's fp4 x fp4 MFMA wants the codes).
    a_qdq: bool = False
    # w4a4 codes path (not a_qdq, not dot_scaled): the activation scales loaded as one int32 per row and 128 codes
    # (cp.async-staged; a 1-byte load is a synchronous load in every K step) and split into bytes in registers.
    # Needs the hidden and intermediate sizes to be multiples of 128; a table bucket falls back to byte loads.
    a_scale_words: bool = False
    group2: int = Field(1, ge=1)  # GEMM2: consecutive N tiles per program, one pipelined loop (kernel N_GROUP)
    # GEMM2 stores each slot's row in bf16 instead of fp32 (the combine still sums in fp32): half the bytes GEMM2
    # writes and the combine reads, and stock's own rounding (its fused MoE rounds the [M, topk, H] cache to bf16
    # before the sum)
    y_bf16: bool = False
    # w4a4 experts through FP8 MMAs (the w4a8 path, for prefill sizes): activations to e4m3 per 128 columns, the
    # weights decoded to e4m3 in the K loop (kernels._mma_fp8; PERF.md "w4a8 prefill"), no per-call conversion.
    # Needs swz128 experts, no swap, K tiles of 128, BLOCK_N1 128 (GEMM1's epilogue quantizes h per tile), no
    # split-K and no GEMM2 tile groups; the intermediate and hidden sizes multiples of 128.
    a8: bool = False
    # CUDA sm90+: the call's kernels (sort, quantizer, GEMM1, GEMM2, combine) launch as programmatic dependents
    # (overlays/pdl.py): the quantizer beside the sort, GEMM2's programs fetching their weights into L2 during
    # GEMM1's tail. Ignored where PDL does not exist (ROCm, the interpreter, pre-sm90).
    pdl: bool = False
    route: Route = Route.OURS  # stock_fp8 buckets must come last (one threshold); see Route
    # gluon_ws: K steps of 128 codes (BLOCK_K1 / BLOCK_K2 are the Triton kernels'), stages1 / stages2 ring slots,
    # swap implied; BLOCK_N1 64 (the decoder holds GEMM1's gate and up rows: 2 x 64), BLOCK_N2 64 or 128
    engine: Engine = Engine.TRITON
    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None
    kpack: int | None = None


def check_table(table: Mapping[str, Any], where: str) -> dict[str, MoeBucket]:
    """Every bucket of a table: its key in the one grammar (`<fmt>:tpe<=N`, `<fmt>:tpe>N`) and its knobs."""
    return parse_table(table, MoeBucket, where, "tpe", tuple(Fmt), "<w4a16|w4a4>:tpe<=N or :tpe>N")


__all__ = ["Act", "Engine", "Fmt", "Layout", "MoeBucket", "Route", "WDeq", "check_table"]
