"""The typed schema of configs/<arch>.json: one `m<=N` / `m>N` bucket per entry (overlays/buckets.py grammar;
m = tokens of the call), optional per-shape overrides `<N>x<K>:m<=N` (knobs over the same bucket for one weight
shape), the top-level `_layout` (the weight layout the hook re-lays weights out in at load), each bucket's
knobs, and the enums of the mode knobs. Tables are validated once when loaded."""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from speedrun.overlays.buckets import check_bucket, parse

DIM = "m"
SHAPE = re.compile(r"^\d+x\d+$")  # a per-shape override's prefix: "<N>x<K>"


class Route(StrEnum):
    """How a bf16-activation call with MXFP4 activations runs (see api.py)."""

    FUSED = "fused"  # one launch: A quantized in the GEMM's A-load
    PREQUANT = "prequant"  # quantizer launch, then the GEMM on quantized A
    DEQUANT_W = "dequant_w"  # sm90 prefill: quantize A, dequantize W, cuBLAS bf16


class AMode(IntEnum):
    """The kernel's A_MODE constexpr: what the A operand is."""

    BF16 = 0  # bf16 used as is (w4a16, or A already quantize-dequantized)
    QUANT = 1  # bf16 quantized to MXFP4 in the A-load (bit-exact with the reference quantizer)
    MXFP4 = 2  # packed codes + E8M0 scales


class WDeq(IntEnum):
    """The kernel's W_DEQ constexpr (dequant path; config key "deq" for plain weights)."""

    GENERIC = 0  # exact decode, interleaved
    FAST = 1  # mx.mxfp4_to_bf16_fast (inline PTX on CUDA), interleaved back along K
    HALVES = 2  # even/odd-K halves, two K/2 dots
    WORDS = 3  # int32 words, eight K/8 dots (BLOCK_K >= 128, else HALVES)
    SWZ = 4  # swz128 weights (mx.layout), whole 128-wide chunks: never a config value, the layout picks it


class Layout(StrEnum):
    """Weight layouts: plain (codes in k order), swz128 (mx.layout: each lane's codes of a 128-wide K chunk
    contiguous, decoded as WDeq.SWZ), swz128_mul1 (the same, every scale byte <= 128 checked at re-layout: one
    multiply per decoded pair)."""

    PLAIN = "plain"
    SWZ128 = "swz128"
    SWZ128_MUL1 = "swz128_mul1"


class GemmKnobs(BaseModel):
    """Knobs that may override a bucket's ("a16": bf16 activations; "swz": swz128 weights; per-shape entries)."""

    model_config = ConfigDict(extra="forbid")
    route: Route | None = None
    deq: WDeq | None = None
    BLOCK_M: int | None = Field(None, ge=16)
    BLOCK_N: int | None = Field(None, ge=16)
    BLOCK_K: int | None = Field(None, ge=32)
    SPLIT_K: int | None = Field(None, ge=0)  # 0: auto (api.split_k)
    CTAS_PER_SM: int | None = Field(None, ge=0)  # resident CTAs per SM: the wave-balanced auto split-K
    MIN_K_TILES: int | None = Field(None, ge=1)
    GROUP: int | None = Field(None, ge=1)
    num_warps: int | None = Field(None, ge=1)
    num_stages: int | None = Field(None, ge=1)
    maxnreg: int | None = None  # CUDA only
    fused_below_nk: int | None = None  # prequant: weights under this many elements run fused
    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None
    kpack: int | None = None


class GemmBucket(GemmKnobs):
    """One `m<=N` bucket: the tile and the route are required; "a16" / "swz" override it."""

    route: Route = Route.FUSED
    BLOCK_M: int = Field(ge=16)
    BLOCK_N: int = Field(ge=16)
    BLOCK_K: int = Field(ge=32)
    a16: GemmKnobs | None = None
    swz: GemmKnobs | None = None


def check_config(cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Validate one bucket (ValueError naming the bad field); returns cfg unchanged."""
    return check_bucket(GemmBucket, cfg, where)


def check_table(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Every entry of a table: keys in the grammar (`m<=N`, `m>N`, `<N>x<K>:m<=N` over an existing bucket), the
    knobs, and `_layout`."""
    for key, cfg in table.items():
        if key == "_layout":
            if cfg not in tuple(Layout):
                raise ValueError(f"{where}: _layout {cfg!r}: expected one of {tuple(x.value for x in Layout)}")
            continue
        if key.startswith("_"):
            continue
        b = parse(key)
        if b.dim != DIM or (b.fmt is not None and not SHAPE.match(b.fmt)):
            raise ValueError(f"{where}: bucket {key!r}: expected m<=N, m>N or <N>x<K>:m<=N")
        if b.fmt is None:
            check_config(cfg, f"{where} {key}")
        elif key.split(":", 1)[1] not in table:
            raise ValueError(f"{where}: {key!r} overrides a bucket the table does not have")
        else:
            check_bucket(GemmKnobs, cfg, f"{where} {key}")
    return table


__all__ = ["AMode", "GemmBucket", "GemmKnobs", "Layout", "Route", "WDeq", "check_config", "check_table"]
