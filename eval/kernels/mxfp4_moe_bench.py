"""MXFP4 MoE bench (one GPU): ours vs SGLang's paths at the finals' shapes.

GPT-OSS-120B (E=128, top-4, H=I=2880, w4a16): speedrun vs triton_kernels (SGLang's Hopper default) and
flashinfer's sm90 cutlass MXFP4 path. DeepSeek-R1 MXFP4 TP8 shard (E=256 routed + 1 shared expert fused as SGLang
fuses it, top-8 + the shared one, H=7168, I=256 per shard, w4a4) vs:
- `fp8_fused_moe`, the baseline that matters: stock SGLang 0.5.17 serves DeepSeek-R1's FP8 checkpoint on sm90
  with the Triton fused MoE in FP8 block mode — `srt/layers/quantization/fp8.py: Fp8MoEMethod.create_moe_runner`
  resolves moe_runner_backend "auto" to TRITON (DeepGEMM's MoE runner only with a DeepEP/Mooncake/NIXL
  all-to-all), whose fused function `moe_runner/triton.py: fused_experts_none_to_triton` calls
  `moe_runner/triton_utils/fused_moe.py: fused_experts(use_fp8_w8a8=True, block_shape=[128, 128])` with the
  tuned config `try_get_optimal_moe_config` finds for the device (baselines.fp8_fused_moe has the whole path;
  each row records the config and whether it came from a tuned JSON);
- `dequant_fused_moe`: experts dequantized to bf16 + SGLang's Triton fused-MoE kernel (the round-3 baseline);
- `speedrun_stock_fp8` (M >= 512): the serving route for large M (overlays/mxfp4_moe/stock_fp8.py), timed as one:
  our swz128 experts converted to FP8 128x128 blocks into the one scratch, then the same stock call as
  `fp8_fused_moe`. Against `speedrun` it places the route's threshold (configs/sm90.json, route stock_fp8).
Every DeepSeek impl computes on the same weights (the FP8 experts carry the MXFP4 values exactly).

Timing: eval/kernels/timer.py for every impl: N distinct weight copies (each impl's own load-time processing of
its own raw copy), each with its own routing set and hidden states, in one CUDA graph, cache flushed before each
replay, median (p10/p90) per call; rows carry the `timing` block. `speedrun` is the serving default on sm90
(experts in config.CUDA_LAYOUT: swz128 with rows in groups of 64), `speedrun_plain` the same configs on
plain-layout experts (round 2).
GB/s counts the minimal bytes: the MXFP4 weights+scales (+biases) of the distinct experts each call touches, plus
x and the output; % of HBM peak from the device name. Top-k selection is not timed for anyone (triton_kernels'
routing() also sorts, so its expert sort is free here, ours is timed). Stock's in-place MoE writes its output
over its input: its copies' hidden states drift over the replays (routing is fixed, so the work is the same).

    python -m speedrun.eval.kernels.mxfp4_moe_bench --out DIR   # writes DIR/mxfp4_moe.json and DIR/mxfp4_moe.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch

from speedrun.eval.kernels import report, timer
from speedrun.eval.kernels.mxfp4_moe_baselines import BUILDERS, ROUTED_SCALING, Raw, fp8_stock_config
from speedrun.eval.kernels.results import FAILURES, Emit, attempt, ignore, reason, recording
from speedrun.eval.kernels.stock import stock_config
from speedrun.eval.kernels.timer import Built, Copies
from speedrun.overlays.arch import current_arch
from speedrun.overlays.mxfp4_moe.api import (
    Act,
    MoeWeights,
    bucket_key,
    fused_moe_mxfp4,
    make_plan,
    pick_config,
    stock_route_ok,
    swizzled,
    table,
)
from speedrun.overlays.mxfp4_moe.config import CUDA_LAYOUT, Layout, MoeBucket, Route
from speedrun.overlays.mxfp4_moe.sglang_hook import _deinterleave
from speedrun.overlays.mxfp4_moe.stock_fp8 import fused_moe_stock_fp8

ROUTING_SETS = 8  # routing sets averaged for the byte count


class Model(NamedTuple):
    experts: int  # routed + fused shared
    topk: int  # routed + fused shared
    hidden: int
    inter: int
    w4a4: bool
    baselines: tuple[str, ...]
    shared: int = 0  # fused shared experts: the last ids, always selected


MODELS = {
    "gpt-oss-120b": Model(128, 4, 2880, 2880, False, ("triton_kernels", "flashinfer")),
    "deepseek-r1-mxfp4-tp8": Model(257, 9, 7168, 256, True, ("fp8_fused_moe", "dequant_fused_moe"), shared=1),
}
MS = (1, 4, 16, 32, 64, 128, 512, 1024, 2048, 4096)  # 1024 / 2048: where the stock_fp8 route's threshold may lie
OURS, ALT = "speedrun", "speedrun_plain"
STOCK_ROUTE, STOCK_ROUTE_MIN_M = "speedrun_stock_fp8", 512  # the large-M route (w4a4 models), prefill sizes only
A8_IMPL = "speedrun_a8"  # the w4a8 path (A8_KNOBS) at the same prefill sizes: against the route
# The w4a8 path's knobs (a8: FP8 MMAs on weights decoded in the K loop, no per-call conversion; PERF.md "w4a8
# prefill"). sm90 AOT: GEMM1 214 registers, 1 CTA/SM; GEMM2 238, 2 CTAs/SM; no spill. Timed as the bench's
# speedrun_a8 rows only: round 11 put it behind the route at M 4096 (2995 vs 2320 us), so its sweep row (p4_a8)
# left the sweep for the ws engine's DeepSeek prefill rows
A8_KNOBS = dict(a8=True, swap=False, a_qdq=False, BLOCK_M=64, BLOCK_N1=128, BLOCK_K1=128, warps1=8, stages1=3,
                BLOCK_N2=128, BLOCK_K2=128, warps2=4, stages2=3, split1=1, group2=1)  # fmt: skip


def make_raw(e: int, h: int, n: int, gptoss: bool) -> Raw:
    g = torch.Generator(device="cuda").manual_seed(0)
    u8 = lambda *s, lo=0, hi=256: torch.randint(lo, hi, s, generator=g, device="cuda", dtype=torch.uint8)
    bias = lambda *s: (torch.randn(*s, generator=g, device="cuda") * 0.1).bfloat16() if gptoss else None
    return Raw(u8(e, 2 * n, h // 2), u8(e, 2 * n, h // 32, lo=118, hi=122), u8(e, h, n // 2),
               u8(e, h, n // 32, lo=118, hi=122), bias(e, 2 * n), bias(e, h))  # fmt: skip


def ours(raw: Raw, gptoss: bool) -> MoeWeights:
    """What hook.process_weights leaves: de-interleaved gate/up and fp32 biases for GPT-OSS."""
    if not gptoss:
        return MoeWeights(raw.w13, raw.s13, raw.w2, raw.s2, a4=True, act=Act.SILU)
    n = raw.w13.shape[1] // 2
    return MoeWeights(_deinterleave(raw.w13, n), _deinterleave(raw.s13, n), raw.w2, raw.s2,
                      _deinterleave(raw.b13.float(), n), raw.b2.float(), act=Act.SWIGLU_OAI)  # fmt: skip


def routing_set(m: int, model: Model, i: int) -> dict[str, torch.Tensor]:
    """Routing set i at M tokens: top-k over the routed experts (softmax weights), then the fused shared experts
    (always chosen, weight 1 / routed_scaling_factor as stock's grouped top-k leaves it), and the hidden states."""
    g = torch.Generator(device="cuda").manual_seed(1000 * m + i)
    routed = model.experts - model.shared
    logits = torch.randn(m, model.experts, generator=g, device="cuda")
    vals, ids = logits[:, :routed].topk(model.topk - model.shared, dim=1)
    tw = torch.softmax(vals, -1)
    if model.shared:
        shared_ids = torch.arange(routed, model.experts, device="cuda").expand(m, model.shared)
        ids = torch.cat((ids, shared_ids), dim=1)
        tw = torch.cat((tw, torch.full((m, model.shared), 1 / ROUTED_SCALING, device="cuda")), dim=1)
    x = torch.randn(m, model.hidden, generator=g, device="cuda").bfloat16()
    return {"x": x, "ids": ids.int().contiguous(), "tw": tw.float().contiguous(), "logits": logits}


def routing_sets(m: int, model: Model, count: int = ROUTING_SETS) -> list[dict[str, torch.Tensor]]:
    return [routing_set(m, model, i) for i in range(count)]


def min_bytes(sets: list[dict], e: int, h: int, n: int, gptoss: bool) -> float:
    per_expert = 2 * n * h // 2 + 2 * n * h // 32 + h * n // 2 + h * n // 32 + (2 * n + h) * 2 * gptoss
    touched = sum(torch.unique(s["ids"]).numel() for s in sets) / len(sets)
    return touched * per_expert + 2 * sets[0]["x"].numel() * 2


Build = Callable[[Raw], tuple[Callable, Callable]]  # raw copy -> (prepare, run), the baselines' contract


def ours_builder(gptoss: bool, swz: bool, cfg: MoeBucket | None = None) -> Build:
    def build(raw: Raw) -> tuple[Callable, Callable]:
        w = ours(raw, gptoss)
        w = swizzled(w, layout=CUDA_LAYOUT) if swz else w
        plan = make_plan(w, config=cfg)
        return (lambda ids, tw, logits: (ids, tw)), (lambda x, st: fused_moe_mxfp4(x, w, *st, plan))

    return build


def a8_config() -> MoeBucket:
    """The w4a8 path's prefill config (A8_KNOBS over the sm90 table's largest w4a4 bucket)."""
    return variant_cfg(table("sm90")["w4a4:tpe>256"], A8_KNOBS)[0]


def ms_for(impl: str, ms: tuple[int, ...]) -> tuple[int, ...]:
    """The Ms an impl is timed at: the large-M route only at prefill sizes (below them it is never served)."""
    return tuple(m for m in ms if impl not in (STOCK_ROUTE, A8_IMPL) or m >= STOCK_ROUTE_MIN_M)


def stock_route_builder(raw: Raw) -> tuple[Callable, Callable]:
    """The large-M serving route on experts as the sm90 hook stores them (CUDA_LAYOUT): conversion + stock FP8 MoE."""
    stock_config()
    w = swizzled(ours(raw, gptoss=False), layout=CUDA_LAYOUT)
    return (lambda ids, tw, logits: (ids, tw)), (lambda x, st: fused_moe_stock_fp8(x, w, *st))


def measure(impl: Built, m: int, model: Model, call_bytes: float) -> tuple[timer.Timing, torch.Tensor]:
    """(timing, output of copy 0 on routing set 0): copy i runs routing set i on weight copy i."""
    sets = [routing_set(m, model, 0)]
    prepare, run = impl(0)
    out = run(sets[0]["x"].clone(), prepare(sets[0]["ids"], sets[0]["tw"], sets[0]["logits"]))

    def make(i: int) -> Callable[[], Any]:
        while len(sets) <= i:
            sets.append(routing_set(m, model, len(sets)))
        s, (prep, fn) = sets[i], impl(i)
        state = prep(s["ids"], s["tw"], s["logits"])
        return lambda: fn(s["x"], state)

    return timer.time_calls(make, int(call_bytes), impl.alloc_bytes), out


def timed_fields(name: str, impl: Built, m: int, model: Model, nbytes: float, ref: dict[int, torch.Tensor],
                 peak: float) -> dict[str, Any]:  # fmt: skip
    """Impl `name`'s timed fields at M tokens; ours' output becomes `ref[m]`, the others' are compared to it."""
    t, out = measure(impl, m, model, nbytes)
    row: dict[str, Any] = {}
    if name == OURS:
        ref[m] = out.float()
    elif m in ref:
        row["rel_diff_vs_speedrun"] = round(((out.float() - ref[m]).norm() / ref[m].norm()).item(), 5)
    gbps, pct = report.pct_of_peak(nbytes, t.us, peak)
    row.update(t.fields(), gbps=gbps, pct_hbm_peak=pct)
    if name == "fp8_fused_moe":
        row["stock"] = _stock_config(model.experts, model.hidden, model.inter, model.topk, m)
    return row


def _set_up(impl: Built) -> None:
    """The impl's load-time set-up on copy 0 (weights, plans): a baseline missing here fails every M's row."""
    impl(0)


def impl_builders(model: Model, allow_jit: bool = False) -> dict[str, Build]:
    """Every impl the bench times on `model`, by name: ours on swz128 and plain experts, the large-M stock route and
    the w4a8 path (w4a4 models, prefill sizes), then the model's stock baselines."""
    a4, topk = model.w4a4, model.topk
    builds: dict[str, Build] = {OURS: ours_builder(not a4, swz=True), ALT: ours_builder(not a4, swz=False)}
    if a4:
        builds[STOCK_ROUTE] = stock_route_builder
        builds[A8_IMPL] = ours_builder(False, swz=True, cfg=a8_config())
    return builds | {b: (lambda raw, b=b: BUILDERS[b](raw, topk, allow_jit=allow_jit)) for b in model.baselines}


def bench_model(model_name: str, gpu: str, ms: tuple[int, ...], allow_jit: bool = False,
                peak: float = timer.DEFAULT_PEAK[1], emit: Emit = ignore) -> list[dict[str, Any]]:  # fmt: skip
    """Impl by impl (one impl's weight copies alive at a time), every M; each row goes to `emit` when done (a
    failing impl, at set-up or at one M: its `error`)."""
    model = MODELS[model_name]
    e, topk, h, n, a4 = model[:5]
    raws = Copies(make_raw(e, h, n, gptoss=not a4))
    builds = impl_builders(model, allow_jit)
    nbytes = {m: min_bytes(routing_sets(m, model), e, h, n, gptoss=not a4) for m in ms}
    ref: dict[int, torch.Tensor] = {}
    rows = []
    for name, build in builds.items():
        impl = Built(build, raws)
        setup_err = attempt({}, partial(_set_up, impl)).get("error")  # a missing baseline is a row per M, not a crash
        for m in ms_for(name, ms):
            w_fmt = "w4a4" if a4 else "w4a16"
            row: dict[str, Any] = dict(impl=name, gpu=gpu, model=model_name, m=m, bucket=bucket_key(w_fmt, m, topk, e),
                                       experts=e, topk=topk, hidden=h, inter=n, bytes=nbytes[m], us=None)  # fmt: skip
            if name == OURS and (note := route_note(a4, row["bucket"])):
                row["note"] = note
            if setup_err:
                row["error"] = f"setup: {setup_err}"[:300]
            else:
                attempt(row, partial(timed_fields, name, impl, m, model, nbytes[m], ref, peak))
            rows.append(row)
            emit(row)
        del impl
        torch.cuda.empty_cache()
    report.add_speedups(rows, ("model", "m"))
    return rows


def route_note(a4: bool, bucket: str) -> str | None:
    """Where the sm90 hook does not serve a shape with the kernels the `speedrun` row times: its bucket routes to
    stock's FP8 MoE (w4a4 only), timed as the `speedrun_stock_fp8` row. Round 10 read such a row as the route."""
    if a4 and table("sm90")[bucket].route == Route.STOCK_FP8:
        return f"not what the sm90 hook serves here: {bucket} routes to stock's FP8 MoE (row {STOCK_ROUTE})"
    return None


def _stock_config(e: int, h: int, n: int, topk: int, m: int) -> dict[str, Any]:
    """The config stock's FP8 fused MoE picks here (a failure to read it is noted, the timing stands)."""
    try:
        return fp8_stock_config(e, h, n, topk, m)
    except FAILURES as exc:
        return {"error": reason(exc)}


# DeepSeek first (round 5's questions: its w4a4 decode buckets, M 4 and 64 included, the weakest vs FP8 in round 4),
# so a step cut short loses GPT-OSS rows; `recording` keeps every row written before. Each model's prefill sizes
# last: M 4096 / 8192 (an 8k-token prefill chunk), where only the config and the "prefill" variants run
# (PREFILL_TPE).
SWEEP_MS = {
    "deepseek-r1-mxfp4-tp8": (1, 4, 16, 32, 64, 128, 512, 4096, 8192),
    "gpt-oss-120b": (1, 4, 16, 32, 64, 128, 512, 4096, 8192),
}
SWEEP_ROW_S = 47 / 83  # round 10's sweep: 83 rows (compiles and its prefill rows included) in 47 s on the H100
# a prefill row (not measured yet): ~7.5 ms per call at M 8192 x 2 copies x >= 20 replays, and the first M of a
# variant compiles two 8-warp 128-wide kernels (the second M reuses them); guessed high
SWEEP_PREFILL_ROW_S = 4.5
PREFILL_TPE = 64  # tokens per expert past which a shape is prefill (buckets tpe<=256 / tpe>256: BLOCK_M 128)
# Overrides of the tuned config ("layout" picks the experts' value layout, default CUDA_LAYOUT = what the sm90 hook
# stores; "fmt" times a variant only on that format's experts; "prefill" times it only at prefill shapes, where
# nothing else but the config runs). DeepSeek (w4a4) first: its activations as bf16 on the MXFP4 grid (a_qdq: no
# per-CTA activation decode, the w4a16 load path: PERF.md round 7),
# the codes path with its activation scales loaded as int32 words (no synchronous 1-byte load per K step),
# GEMM1 split-K x2 / x4 where the bucket has none (M 32: ~165 active experts x 4 N tiles = 660 CTAs over 528
# slots of 4 per SM, 1.25 waves, so the second wave runs one CTA per SM through all 56 K steps), 16-slot blocks at
# tpe<=16, GEMM2 as 128-row tiles over 2 warpgroups, GEMM2 walking 4 N tiles per program (PERF.md "Round 5
# candidates", "GEMM2 tile groups"); then the grouped-row layout and swz128's deeper K tiles on both models.
# Prefill variants (GPT-OSS M 4096 /
# 8192; PERF.md "Round 6 candidates") set every tile knob, so each runs the same kernels wherever it is laid.
# Left out as settled on the H100 and the H200 (slower at every shape timed): dot_scaled's upcast, no swap-AB at
# decode, the two-multiply decode (GPU-tested for correctness: the fallback for scale bytes > 128), 128-row
# weight tiles for both GEMMs (swz_bn128), GEMM1 without split-K where the table has it (swz_no_split1); after
# round 7 (H100) also split-K x4 at DeepSeek M 32-128, the activation scales as words (a4_sw: M 1 only), and GEMM2's
# 128-row tiles on 8 warps (a4_g2_bn128); in round 8 split-K x2 (a4_split2: 0.98x at M 32, behind a_qdq's 0.90x)
# and 16-slot blocks (a4_bm16: the table's BLOCK_M at every w4a4 decode bucket since round 6) made room for GEMM1's
# tile shape with a_qdq (a4_qdq_bk256, a4_qdq_bn128), and GPT-OSS's b_regs (a16_bregs: 9-19% slower at every M in
# round 7) and a_qdq with b_regs (a4_qdq_bregs: behind a_qdq but at M 64, 2.4% there) made room for the grouped
# layout, served since round 9 (its sweep rows g64 and a4_qdq_bk256_g64 won at every decode M over row-major
# swz128: 0.89-0.99x on GPT-OSS, 0.93-0.97x on DeepSeek; a variant {"layout": "swz"} times row-major again).
# Since round 9 the table runs a_qdq with GEMM1's 256-deep K tile at every w4a4 decode bucket (and group2 where
# round 7 put it): a4_qdq and a4_qdq_g4 left the sweep (the config's row; a4_qdq_bk256 stays for tpe<=64, M 512),
# and a4_qdq_bn128 (1.01-1.20x in round 9; on the 256-deep tile 156 registers x 8 warps: 1 CTA per SM). Round 10
# retired a4_qdq_bk256 (1.003x at M 512, where group2 8 now serves) and a4_group4 (0.93x at M 16, as group8).
# p16_bm64 (64-slot blocks at prefill, b_regs) was behind the config at both prefill Ms in every sweep, rounds 5-10
# (round 10: 1.05x / 1.19x its time at M 4096 / 8192): it made room for the ws engine's prefill rows.
_P16 = dict(fmt="w4a16", prefill=True, BLOCK_M=128, BLOCK_N1=128, BLOCK_K1=128, warps1=8, stages1=3, BLOCK_N2=128,
            BLOCK_K2=128, warps2=8, stages2=3, split1=1)  # fmt: skip
# DeepSeek's prefill rows on the ws engine, served by our kernels where the config's row is the stock route
_P4 = dict(fmt="w4a4", prefill=True, route="ours", engine="gluon_ws", BLOCK_N1=64, a_qdq=True, a8=False, split1=1,
           group2=1)  # fmt: skip
SWEEP_VARIANTS = {
    # Since round 9 every w4a4 decode bucket runs a_qdq with GEMM1's 256-deep K tile: what is left to try on it.
    # GEMM1's split-K at tpe<=1 (M 1-28) halved from the table's 4 (its K loop now takes 256-deep steps), and a 4th
    # stage for the 256-deep tile (sm90 AOT at tpe<=4: 164 registers, 93 KB, 2 CTAs per SM instead of 3)
    "a4_split2": {"fmt": "w4a4", "split1": 2},
    "a4_st4": {"fmt": "w4a4", "stages1": 4},
    # 8 N tiles per program (served: 4 at tpe<=4/16, 8 at tpe<=64 since round 10, 0.81x at M 512): DeepSeek's GEMM2
    # at M 32 launches ~5,000 programs of 32 KiB of weights each, every one paying its pipeline's fill
    "a4_group8": {"fmt": "w4a4", "group2": 8},
    # round 10's two near-misses at the c32 step's bucket (tpe<=4, M 29-114), together: bf16 GEMM2 rows (0.98x at M
    # 32 / 64) and 8 N tiles per program (0.98-0.99x)
    "a4_y16_g8": {"fmt": "w4a4", "y_bf16": True, "group2": 8},
    # GPT-OSS's GEMM2 (K 2880) with a 4th stage: 63 KB, still 3 CTAs per SM by registers (sm90 AOT at tpe<=4; a 4th
    # GEMM1 stage would drop it to 2, 128-row tiles on 8 warps to 1)
    "a16_st4_2": {"fmt": "w4a16", "stages2": 4},
    # GEMM2's slot rows in bf16 (the combine's reads and GEMM2's writes halve: ~8 MB at DeepSeek M 32)
    "y16": {"y_bf16": True},
    # the call's five kernels as one PDL chain (overlays/pdl.py): the quantizer beside the one-CTA sort, GEMM2's
    # programs resident during GEMM1's tail with their weights prefetched into L2; the round 8 breakdown put ~16 us
    # of a DeepSeek M 32 call's 284 us span between its kernels
    "pdl": {"pdl": True},
    # Round 12 (engine gluon_ws, gluon_sm90_ws.py; sm90 AOT only so far): both GEMMs as one persistent
    # warp-specialized kernel each (loader, weight decoder and MMA warpgroups over mbarriers), at most one CTA an SM
    # walking (expert block, N tile, K split) items; the bucket's BLOCK_M, split1, y_bf16 and pdl; 4 ring slots, or
    # the most that fit at BLOCK_M 64 (GEMM2 on 64-row tiles). w4a4 with a_qdq at every bucket (the kernel takes
    # bf16 activations; without it a w4a4 bucket would run, and time, the Triton kernels under this name)
    "ws": {"engine": "gluon_ws", "BLOCK_N1": 64, "stages1": 4, "stages2": 4, "a_qdq": True},
    "ws_deep": {"engine": "gluon_ws", "BLOCK_N1": 64, "BLOCK_N2": 64, "stages1": 5, "stages2": 6, "a_qdq": True},
    # The same engine at GPT-OSS's prefill sizes: with 64- or 128-slot blocks an item's MMA outlasts its weight
    # decode (the Triton kernels' decode -> MMA -> wait chain, PERF.md round 6, is what the partitions overlap)
    "ws_p64": {**_P16, "engine": "gluon_ws", "BLOCK_M": 64, "BLOCK_N1": 64, "stages1": 4, "stages2": 4},
    "ws_p128": {**_P16, "engine": "gluon_ws", "BLOCK_N1": 64, "BLOCK_N2": 64, "stages1": 3, "stages2": 4},
    # The same rows at DeepSeek's prefill sizes (M 4096; M 8192 is the 8k E2E's chunk), w4a4 as a_qdq, against the
    # served stock_fp8 route (the bench's speedrun_stock_fp8 rows): its per-call FP8 conversion of all 257 experts
    # is ~0.85 ms whatever M. Stock's FP8 MoE runs M 4096 at ~280 TFLOP/s (round 4: 1466 us), ~28% of the H100's
    # dense bf16 peak, so bf16 MMAs with the decode hidden could reach the route without converting anything
    "ws_p64_a4": {**_P4, "BLOCK_M": 64, "BLOCK_N2": 128, "stages1": 4, "stages2": 4},
    "ws_p128_a4": {**_P4, "BLOCK_M": 128, "BLOCK_N2": 64, "stages1": 3, "stages2": 4},
    "p16_swap_bn128": {**_P16, "swap": True, "b_regs": True},
    "p16_bn128": {**_P16, "swap": False},
}
VARIANT_META = ("layout", "fmt", "prefill")  # not bucket knobs: value layout, the only format / shapes it runs on


def is_prefill(model: Model, m: int) -> bool:
    """Whether a shape is prefill-sized for the sweep (see PREFILL_TPE)."""
    return m * model.topk / model.experts > PREFILL_TPE


def sweep_variants(fmt: str, prefill: bool = False) -> dict[str, dict[str, Any]]:
    """What the sweep times on experts of `fmt` at a decode (or prefill) shape: the config, then every variant
    not aimed at the other format or the other kind of shape."""
    return {"config": {}, **{k: v for k, v in SWEEP_VARIANTS.items()
                             if v.get("fmt", fmt) == fmt and v.get("prefill", False) == prefill}}  # fmt: skip


def sweep_plan(model_name: str, arch: str = "sm90") -> list[tuple[int, dict[str, dict[str, Any]]]]:
    """(M, variants timed there) in sweep order for one model on `arch`'s table: a variant that runs what the
    config or an earlier variant runs at that M (e.g. split1 outside tpe<=1, or knobs the bucket has already) is
    left out, the config's row stands for it."""
    model = MODELS[model_name]
    fmt = "w4a4" if model.w4a4 else "w4a16"
    plan = []
    for m in SWEEP_MS[model_name]:
        base = table(arch)[bucket_key(fmt, m, model.topk, model.experts, arch)]
        seen: list[tuple[dict[str, Any], str]] = []
        kept = {}
        for name, var in sweep_variants(fmt, is_prefill(model, m)).items():
            cfg, layout = variant_cfg(base, var)
            if (key := (cfg.model_dump(), layout)) not in seen:  # every knob as it runs, schema defaults included
                seen.append(key)
                kept[name] = var
        plan.append((m, kept))
    return plan


def variant_cfg(base: MoeBucket, var: dict[str, Any]) -> tuple[MoeBucket, str]:
    """(config for fused_moe_mxfp4, value layout) of a sweep variant on top of a bucket's config."""
    knobs = {k: v for k, v in var.items() if k not in VARIANT_META}
    return base.replace(**{"dot_scaled": False, **knobs}), var.get("layout", CUDA_LAYOUT.value)  # may set dot_scaled


def _sweep_fields(impl: Built, m: int, model: Model, want: Any, nbytes: float, peak: float) -> dict[str, Any]:
    t, got = measure(impl, m, model, nbytes)
    row: dict[str, Any] = {}
    if want is not None:
        row["rel_diff_vs_config"] = round(((got.float() - want).norm() / want.norm()).item(), 5)
    gbps, pct = report.pct_of_peak(nbytes, t.us, peak)
    return {**row, **t.fields(), "gbps": gbps, "pct_hbm_peak": pct}


def _sweep_row(impl: Built, m: int, model: Model, want: Any, row: dict[str, Any],
               peak: float) -> dict[str, Any]:  # fmt: skip
    return attempt({**row, "us": None}, partial(_sweep_fields, impl, m, model, want, row["bytes"], peak))


def sweep_model(model_name: str, gpu: str, peak: float = timer.DEFAULT_PEAK[1], emit: Emit = ignore,
                only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The config and the SWEEP_VARIANTS entries `sweep_plan` times at each of SWEEP_MS[model] (`only`: those of
    them); rows carry `bucket` (the config key the shape maps to), `variant`, `config` (what fused_moe_mxfp4 ran)
    and `us`; impl "speedrun" on experts in CUDA_LAYOUT (the sm90 serving layout), "speedrun_<layout>" on others."""
    model = MODELS[model_name]
    e, topk, h, n, a4 = model[:5]
    raws = Copies(make_raw(e, h, n, gptoss=not a4))
    plain_w = ours(raws(0), gptoss=not a4)
    weights = {"plain": Copies(plain_w)}  # per layout, made when a variant first needs it, shared by the rest

    def layout_copies(layout: str) -> Copies:
        if layout not in weights:
            weights[layout] = Copies(swizzled(plain_w, layout=Layout(layout)))
        return weights[layout]

    rows = []
    for m, variants in sweep_plan(model_name, current_arch()):
        variants = {k: v for k, v in variants.items() if only is None or k == "config" or k in only}
        s0 = routing_set(m, model, 0)
        nbytes = min_bytes(routing_sets(m, model), e, h, n, gptoss=not a4)
        base_cfg = pick_config(plain_w, m, topk)
        bucket = bucket_key(plain_w.fmt, m, topk, e)
        try:
            w0 = layout_copies(CUDA_LAYOUT.value)(0)
            want = fused_moe_mxfp4(s0["x"], w0, s0["ids"], s0["tw"], make_plan(w0)).float()
        except FAILURES:  # the config's own row records the error below
            want = None
        for name, var in variants.items():
            cfg, layout = variant_cfg(base_cfg, var)
            # the value layout is per process, not a bucket knob: other layouts' rows are "speedrun_<layout>" so
            # that `speedrun kernels tune` (which reads impl "speedrun" rows) never writes a layout into the table
            impl = OURS if layout == CUDA_LAYOUT else f"{OURS}_{layout}"
            served = {"route": Route.STOCK_FP8.value} if route_served(cfg, plain_w) else {}
            row = dict(impl=impl, variant=name, bucket=bucket, config=cfg.entry(), gpu=gpu, model=model_name, m=m,
                       bytes=nbytes, **served)  # fmt: skip
            rows.append(_sweep_row(Built(_weights_build(cfg), layout_copies(layout)), m, model, want, row, peak))
            emit(rows[-1])
        for r in sorted((r for r in rows if r["m"] == m and r["us"]), key=lambda r: r["us"]):
            print(f"sweep {model_name} M={m} {bucket} {r['variant']:14} {r['impl']:15} {r['us']:9.1f} us "
                  f"{r['pct_hbm_peak']:5.1f} %HBM")  # fmt: skip
    return rows


def _weights_build(cfg: MoeBucket) -> Callable[[MoeWeights], tuple[Callable, Callable]]:
    """A sweep variant on one copy of our (already processed) experts, served as the hook serves it: where its
    bucket routes to stock (`route_served`), the route (conversion + stock's FP8 MoE), else our kernels."""

    def build(w: MoeWeights) -> tuple[Callable, Callable]:
        if route_served(cfg, w):
            stock_config()
            return (lambda ids, tw, logits: (ids, tw)), (lambda x, st: fused_moe_stock_fp8(x, w, *st))
        plan = make_plan(w, config=cfg)
        return (lambda ids, tw, logits: (ids, tw)), (lambda x, st: fused_moe_mxfp4(x, w, *st, plan))

    return build


def route_served(cfg: MoeBucket, w: MoeWeights, arch: str | None = None) -> bool:
    """Whether the hook serves a call of this config on these experts with the large-M stock route, so a sweep row
    times what is served and `speedrun kernels tune` weighs a variant of ours against the route (round 10 tuned
    against our kernels where the route served: a misread)."""
    return cfg.route == Route.STOCK_FP8 and stock_route_ok(w, arch or current_arch())


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speedrun.eval.png import save_png

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["model"] == model):
            pts = [(r["m"], r["us"]) for r in rows if r["model"] == model and r["impl"] == impl and r["us"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set(xscale="log", yscale="log", xlabel="tokens (M)", ylabel="µs per MoE layer (median)", title=model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"MXFP4 MoE on {rows[0]['gpu']}")
    fig.tight_layout()
    save_png(fig, path)


def summary(rows: list[dict[str, Any]]) -> str:
    """Per model: one line per M, ours vs each of the model's baselines (speedup = baseline / ours) and % HBM."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        impls = [i for i in dict.fromkeys(r["impl"] for r in mine) if i != OURS]
        out += [model, report.table(mine, ("m",), impls)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--sweep", action="store_true", help="only time the variants: DIR/mxfp4_moe_sweep.json")
    ap.add_argument("--variants", help="--sweep: only these SWEEP_VARIANTS (comma list; the config always runs)")
    ap.add_argument("--allow-jit", action="store_true", help="let flashinfer JIT-compile its CUTLASS MoE (minutes)")
    args = ap.parse_args(argv)
    only = tuple(args.variants.split(",")) if args.variants else None
    if bad := [v for v in only or () if v not in SWEEP_VARIANTS]:
        print(f"--variants: unknown {bad}; expected some of {', '.join(SWEEP_VARIANTS)}")
        return 2
    if not torch.cuda.is_available():
        print("mxfp4_moe bench needs a GPU")
        return 1
    models = args.models.split(",")
    if bad := [m for m in models if m not in MODELS]:
        print(f"--models: unknown {bad}; expected some of {', '.join(MODELS)}")
        return 2
    gpu, t0 = torch.cuda.get_device_name(), time.time()
    peak_name, peak = timer.hbm_peak(gpu)
    meta = {"op": "mxfp4_moe", "gpu": gpu, "hbm_peak_Bps": peak, "hbm_peak_of": peak_name,
            "timing": timer.method_meta(timer.device_cache_bytes()),
            "speedup_vs": "baseline us / our us (> 1: ours faster)"}  # fmt: skip
    if args.sweep:
        with recording(args.out / "mxfp4_moe_sweep.json", meta) as res:
            for model in sorted(models, key=list(SWEEP_MS).index):  # round 5's questions first
                sweep_model(model, gpu, peak, emit=res.add, only=only)
                torch.cuda.empty_cache()
        print(f"[{time.time() - t0:.1f} s] -> {res.path}")
        return 0 if all(r["us"] for r in res.rows) else 1
    ms = tuple(int(v) for v in args.ms.split(","))
    meta |= {"routing_sets_in_bytes": ROUTING_SETS,
             "bytes": "MXFP4 weights+scales(+bias) of distinct touched experts + x + out", "doc": __doc__}  # fmt: skip
    with recording(args.out / "mxfp4_moe.json", meta, plot, summary) as res:
        for model in models:
            bench_model(model, gpu, ms, args.allow_jit, peak, emit=res.add)
            res.meta["seconds"] = round(time.time() - t0, 1)
            torch.cuda.empty_cache()
    print(f"[{res.meta['seconds']} s] -> {args.out}")
    return 0 if all(r["us"] for r in res.rows if r["impl"] == OURS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
