"""MLA decode benchmark, side by side on the same inputs: ours vs SGLang's triton decode kernel, flashinfer MLA
(BatchMLAPagedAttentionWrapper) and FlashMLA (sgl_kernel, page size 64).

`python -m speedrun.eval.kernels.mla_decode_bench --out DIR [--quick] [--shape BS:KV:DTYPE ...] [--impls ...] [--sweep]`
writes DIR/mla_decode.json and DIR/mla_decode.png. Baselines: `sglang_triton` is `decode_attention_fwd` as SGLang's
TritonAttnBackend drives it for MLA (stock's `--attention-backend triton`), `flashinfer` and `flashmla` are the
kernels behind stock's `flashinfer` / `flashmla` backends. Timing: eval/kernels/timer.py for every impl (a CUDA
graph over N distinct copies of the paged pool and queries, cache flushed before each replay, median with p10/p90
per call; rows carry the `timing` block). GB/s counts the minimal bytes: the cached latent rows only
(576 x 2 = 1152 B per token in bf16, 576 B in fp8); % of HBM peak from the device name. All impls read one paged
pool (page 64, pages scattered); the token-slot impls get the expanded kv_indices, FlashMLA the block table.
Every impl runs in try/except: failures become rows with `error`. `--sweep` times config variants of our kernel
instead (for tuning configs/sm90.json).
Impls `speedrun` (as served: the table's kernel and compute for each cache; on sm90 at 16 heads FP8 caches run the
Gluon a8w8 kernel, bf16 caches the Triton one), and on FP8 caches its alternatives `speedrun_a16` (16-bit compute:
fp8 upcast) and `speedrun_a8w8` (the Triton a8w8 kernel with the table's a8w8 knobs). Round 8's first two H100 runs
named them otherwise: there `speedrun` was a16, `speedrun_a8w8` the table's a8w8 (the Gluon kernel once the table
chose it) and `speedrun_gluon` the Gluon kernel at the bucket's split width.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from speedrun.eval.kernels import report, timer
from speedrun.eval.kernels.results import Emit, attempt, ignore, recording
from speedrun.eval.kernels.timer import Built, Copies
from speedrun.overlays.mla_decode.config import MlaBucket

HEADS = 16
PAGE = 64
SM_SCALE = 1.0 / math.sqrt(192)
CONTEXT_LEN = 163840  # DeepSeek-R1: sizes SGLang's max_kv_splits exactly as the server would
BUDGET_S = 105.0  # under the device script's 120 s step: later shapes are written as skipped
IMPLS = ("speedrun", "speedrun_a16", "speedrun_a8w8", "sglang_triton", "flashinfer", "flashmla", "speedrun_mxfp4")
OURS_ALSO = ("speedrun_a16", "speedrun_a8w8", "speedrun_mxfp4")  # ours besides, FP8 caches only (on bf16 the first
# two are `speedrun`); speedrun_mxfp4: the same pool quantized to MXFP4 (the qualifier's third format), last: cut first
MXFP4 = "speedrun_mxfp4"
# --sweep: named overrides of the heads<=16 bucket (an empty "fp8" dict makes the variant govern fp8 caches too).
# "default" is the shipped table as is (fp8 caches take its "fp8" overrides). Round 1's path (one 512-column tile,
# fp8 converted to bf16) left the sweep in round 6: 2.5-3x slower than default in every round (PERF.md); so did
# qk_chains 1 (1-4% behind two chains in rounds 3 and 5), making room for the tokens-as-M variants; in round 8
# a8w8_pv_f16_st3 (1.27-1.42x default in rounds 5-6), merge_p32 (the round-2 merge: 1.00x since round 6's
# merge) and s4_n16_w4_st9 (1.05-1.5x) made room for the Gluon kernel.
S4 = {"split_d": 4, "fp8_cvt": "asm", "num_stages": 5}  # BLOCK_N 32 at 5 stages: two cp.async tile buffers
FP8_R2 = {"BLOCK_N": 32, "num_warps": 4, "num_stages": 5, "split_d": 4, "fp8_cvt": "asm"}
T16 = {"a16_mma_m": "tokens", "fp8_cvt": "asm", "BLOCK_N": 64}  # 16-bit tokens-as-M (sm90 wgmma; fp8 upcast to f16)
A16 = {"fp8_compute": "a16"}  # fp8 caches upcast to 16 bits: the fp8 variants of rounds 1-3 tune that path
A8 = {"mma_m": "tokens", "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}  # sm90 a8w8: no spill at 8 warps
GLUON = {**A8, "engine": "gluon", "pv": "f16"}  # sm90 AOT: 130-170 regs, no spill, 164 / 199 KB smem (2 / 3 stages)
WS = {**GLUON, "engine": "gluon_ws", "programs_per_sm": 1}  # gluon_sm90_ws.py: 213-215 KB smem, 1 CTA/SM
A8W8 = {"fp8_compute": "a8w8"}  # the a8w8 variants compute a8w8 whatever the table's fp8_compute (sm90: a16)
# Round 5 (PERF.md "Round 5 candidates"): the fp8 a16 path costs ~3 us per 32-token tile whatever the bytes.
# fp8_n64_w8: 64-token tiles on 8 warps (8 tokens per warp for QK, as today; barriers and softmax reductions
# once per 64 tokens; 1 CTA/SM = the same 8 warps per SM). fp8_r168_st3: one tile buffer and a 168-register
# cap, so 3 CTAs (12 warps) fit an SM. Both are fp8 overrides: bf16 caches run the default kernel.
FP8_N64_W8 = {"BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "split_d": 4, "fp8_cvt": "asm"}
FP8_R168_ST3 = {**FP8_R2, "num_stages": 3, "maxnreg": 168}
# The open questions first (PERF.md "Round 5"), then round 3's settled variants as controls.
VARIANTS = {
    "default": {},  # round 3: snap (uniform batches cut at sequence boundaries), flat equal chunks otherwise
    # both kernels launched as programmatic dependents (overlays/pdl.py): the merge starts as the partial kernel's
    # programs finish, the next call's partial kernel in the merge's tail
    "pdl": {"pdl": True},
    # Round 11: round 9's a8w8 tile warp-specialized (gluon_sm90_ws.py, served since): a loader and a converter
    # partition hand tiles to the MMA warps over mbarriers, so a tile's copies and V convert leave the MMA warps'
    # chain (sm90 AOT: 284 instructions a warp and 6 barriers a tile vs ~540 and 8)
    "gluon_ws": {**A8W8, "a8w8": WS},
    # Round 12 (sm90 AOT only): the running max moves only when P would overflow f16 (a8w8.lazy_max), each token
    # warp's partial max published by P's own barrier: 3 partition barriers a tile instead of 6, no cross-warp
    # reduction and no accumulator rescale while the max holds (round 12's ncu: the per-tile max ~6% of samples)
    "gluon_ws_lazy": {**A8W8, "a8w8": {**WS, "lazy_max": True}},
    # Round 13: the merge as one program per (sequence, head) over all 512 columns (bs 32: 512 programs of a [8, 512]
    # tile instead of 1024 of [8, 256]). In round 12's E2E profile our merge took 4.9 µs a layer where FlashMLA's
    # combine took 2.8
    "merge_dv512": {"merge": {"BLOCK_P": 8, "min_block_dv": 512, "max_tile": 4096, "num_warps": 4, "num_stages": 2}},
    "fp8_n64_w8": {**A16, "fp8": FP8_N64_W8},
    "fp8_r168_st3": {**A16, "fp8": FP8_R168_ST3},
    # a8w8 on 128-token tiles: 8 warps as two warpgroups along the tokens (M = 128 -> warps [8, 1]), so each QK
    # wgmma is m64n16k32 (at 64-token tiles the two warpgroups split the 16 heads: n8) and the per-tile barriers
    # and softmax reductions come once per 128 tokens. SASS: 0.69x default's warp-instructions per token, 255 regs
    # + 8 B stack, 126 KB smem, 1 CTA/SM (PERF.md round 5).
    "a8w8_n128_pv_f16": {**A8W8, "a8w8": {**A8, "BLOCK_N": 128, "pv": "f16"}},
    # a8w8 (PERF.md, round 4): PV in fp8 (Triton transposes V through shared memory with byte stores, and the
    # tile is then loaded synchronously) vs PV in f16 (cp.async pipelined, V upcast by the packed convert)
    "a8w8_pv_f16": {**A8W8, "a8w8": {**A8, "pv": "f16"}},
    "a8w8_pv_fp8": {**A8W8, "a8w8": {**A8, "pv": "fp8"}},
    # its 164 KB of shared memory hold one CTA per SM: the table's 2 programs per SM would be two waves (a8w8's own
    # split width; round 8 set it bucket-wide, which fp8 caches time the same and bf16 caches 4-17% slower)
    "gluon_pps1": {**A8W8, "a8w8": {**GLUON, "programs_per_sm": 1}},
    # a tile's PV left in flight under the next tile's QK and V copy (PERF.md round 9), one 64-token V slice
    "gluon_pps1_pipe_cvt64": {**A8W8, "a8w8": {**GLUON, "programs_per_sm": 1, "pipe_pv": True, "cvt_rows": 64}},
    # bf16 caches in the Gluon kernel: both wgmmas read the landed tile (fp8 caches keep the table's a16 kernel)
    "kv16_gluon": {"kv16_engine": "gluon", "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    "a16": A16,  # the round-3 upcast path as shipped before a8w8 (sm90 ships it now: the same kernel as default)
    "flat": {"snap": False},  # the round-2 split: equal cuts of the flat KV range
    "s4_n64_w4_st3": {**S4, **A16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},  # one 72 KB buffer (bf16)
    "s4_n32_w4_pps1": {**S4, **A16, "BLOCK_N": 32, "num_warps": 4, "programs_per_sm": 1},
}
# Timed and out of the sweep: kept for the tools and tests that still read them (variant_config finds them).
RETIRED = {
    # one f16 V buffer: 3 ring slots fit instead of 2 (more tiles in flight; the converter waits for the PV before
    # it). Round 12: 0.962-0.993x the served kernel at bs >= 4 (geomean 0.986, under the 3% gate); 4 slots
    # (`gluon_ws_v1_st4`) were 0.4-0.9% behind 3 at every shape. Retired in round 13 to make room for merge_dv512
    "gluon_ws_v1_st3": {**A8W8, "a8w8": {**WS, "num_stages": 3, "v_bufs": 1}},
    # Round 6: 16-bit compute with the tokens as M (wgmma m64nHk16, 4 latent slices). Round 8 (H100): 1.4-2.3x
    # the default's time on both caches at every sweep shape.
    "t16_n64_w4": {**A16, **T16, "num_warps": 4, "num_stages": 2},  # sm90 AOT: 255 regs + spills (fp8 320 B)
    "t16_n64_w8": {**A16, **T16, "num_warps": 8, "num_stages": 2},  # bf16 172 regs, no spill; fp8 255 + 64 B
    # Round 8: the a8w8 semantics (pv f16) in Gluon, FlashMLA's structure: cp.async ring, fp8 QK wgmma straight
    # from the landed tile while the warpgroups convert V once to f16 in shared memory, PV wgmma (gluon_sm90.py).
    # At the table's 2 programs per SM (two waves of one CTA per SM) it lost to gluon_pps1 at every shape (round 8)
    "a8w8_gluon": {**A8W8, "a8w8": GLUON},
    # V's f16 copy in one 64-token slice without PV in flight: round 9 served it with pipe_pv (gluon_pps1_pipe_cvt64)
    "gluon_pps1_cvt64": {**A8W8, "a8w8": {**GLUON, "programs_per_sm": 1, "cvt_rows": 64}},
    # 3 stages (199 KB) at one program per SM: within 2% of 2 stages in rounds 8-9; PV in flight with 32-token V
    # slices: 0-3% behind the 64-token slices served since round 9
    "a8w8_gluon_pps1_st3": {**A8W8, "a8w8": {**GLUON, "num_stages": 3, "programs_per_sm": 1}},
    "gluon_pps1_pipe": {**A8W8, "a8w8": {**GLUON, "programs_per_sm": 1, "pipe_pv": True}},
    # PV as fp8 wgmma (round 11; the a8w8: P in e4m3, V^T transposed to fp8 by the converter; half the V
    # bytes, so 3 ring slots): 0.94-1.05x round 9's kernel with the loader fix where PV in f16 is 0.85-0.92x (its
    # byte transposes conflict in shared memory); split by heads as QK is (alpha without a re-layout): 1.08-1.16x
    # before the loader fix, like the row split
    "gluon_ws_pv8": {**A8W8, "a8w8": {**WS, "pv": "fp8", "num_stages": 3}},
    "gluon_ws_pv8_h": {**A8W8, "a8w8": {**WS, "pv": "fp8", "num_stages": 3, "pv_split": "heads"}},
}
# Variants whose knobs leave the table's fp8 (a16) overrides in place (split/launch knobs, compute, a8w8 knobs) or
# replace them with their own "fp8".
SPLIT_VARIANTS = ("default", "pdl", "gluon_ws", "gluon_ws_pv8", "gluon_ws_pv8_h",
                  "gluon_ws_v1_st3", "gluon_ws_lazy", "merge_dv512",
                  "flat", "a16", "a8w8_pv_fp8", "a8w8_pv_f16",
                  "fp8_n64_w8", "fp8_r168_st3",
                  "a8w8_n128_pv_f16", "a8w8_gluon", "a8w8_gluon_pps1_st3", "gluon_pps1", "gluon_pps1_cvt64",
                  "gluon_pps1_pipe", "gluon_pps1_pipe_cvt64", "kv16_gluon")  # fmt: skip
BUCKET = "heads<=16"  # the configs/sm90.json key every case here maps to (HEADS = 16)
MIXED = "mixed32k"  # kv_len label of the mixed batch: one 32k sequence among 1k ones
# (bs, kv_len); kv_len MIXED: lens [32768] + [1024] * (bs - 1)
SWEEP_SHAPES = [
    (256, 8192),
    (32, 8192),
    (256, 1024),
    (1, 32768),
    (256, MIXED),
    (128, 8192),
    (4, 32768),
]
SWEEP_BUDGET_S = 115.0  # under the device script's 130 s step
# Round 3's sweep timed 159 cells (variant x shape x cache, compiles included) in this budget before it ran out.
SWEEP_S_PER_CELL = SWEEP_BUDGET_S / 159


def variant_config(name: str, arch: str | None = None) -> MlaBucket:
    """The heads<=16 bucket of the arch's table (this GPU's by default) with one sweep variant applied."""
    from speedrun.overlays.mla_decode import api

    base = api.config_for(HEADS, arch)
    knobs = {**VARIANTS, **RETIRED}[name]
    if name in SPLIT_VARIANTS:  # split/launch knobs only: the fp8 overrides of the table stay
        return base.replace(**knobs)
    return base.replace(**knobs, fp8={})


def seed_of(bs: int, kv_len: int | str) -> int:
    return bs + (kv_len if isinstance(kv_len, int) else 7)


def seq_lens(bs: int, kv_len: int | str) -> list[int]:
    return [32768] + [1024] * (bs - 1) if kv_len == MIXED else [int(kv_len)] * bs


def make_inputs(bs: int, kv_len: int | str, kv_dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    """One paged pool (page 64, pages scattered at random) and every view the impls need."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    lens_l = seq_lens(bs, kv_len)
    pages_l = [-(-n // PAGE) for n in lens_l]
    perm = torch.randperm(sum(pages_l) + 1, device="cuda", generator=g)[: sum(pages_l)].int()
    block_table = torch.zeros(bs, max(pages_l), dtype=torch.int32, device="cuda")  # tails past a length: unread
    for b, off in enumerate(torch.tensor([0, *pages_l]).cumsum(0)[:-1].tolist()):
        block_table[b, : pages_l[b]] = perm[off : off + pages_l[b]]
    kv = torch.randn((sum(pages_l) + 1) * PAGE, 1, 576, device="cuda", generator=g, dtype=torch.bfloat16)
    kv = kv.to(kv_dtype)
    slots = torch.cat([(block_table[b, torch.arange(n, device="cuda") // PAGE].long() * PAGE
                        + torch.arange(n, device="cuda") % PAGE) for b, n in enumerate(lens_l)])  # fmt: skip
    lens = torch.tensor(lens_l, dtype=torch.int32, device="cuda")
    indptr = torch.zeros(bs + 1, dtype=torch.int32, device="cuda")
    indptr[1:] = torch.cumsum(lens, 0)
    q = torch.randn(bs, HEADS, 576, device="cuda", generator=g, dtype=torch.bfloat16) * 0.5
    return dict(q=q, kv=kv, slots=slots, lens=lens, indptr=indptr, block_table=block_table, bs=bs, kv_len=kv_len)


def setup_speedrun(x: dict[str, Any], config: MlaBucket | None = None,
                   compute: str | None = None) -> Callable[[], torch.Tensor]:  # fmt: skip
    """Ours with `config` (the sweep's variant) or the shipped table, computing as `compute` or as the table says."""
    from speedrun.overlays.mla_decode import api

    plan = api.make_plan(HEADS, x["q"].dtype, x["kv"].dtype, device=x["q"].device, config=config, compute=compute)
    ws = plan.alloc_workspace(x["bs"], x["q"].device)
    o = torch.empty(x["bs"], HEADS, 512, dtype=torch.bfloat16, device="cuda")
    args = (x["q"], x["kv"], o, x["indptr"], x["slots"], plan)
    return lambda: api.mla_decode(*args, sm_scale=SM_SCALE, workspace=ws)


def setup_speedrun_a16(x: dict[str, Any]) -> Callable[[], torch.Tensor]:
    return setup_speedrun(x, compute="a16")  # fp8 upcast to 16 bits: the path sm90 served before round 8


def setup_speedrun_a8w8(x: dict[str, Any]) -> Callable[[], torch.Tensor]:
    """The Triton a8w8 kernel with the table's a8w8 knobs (a 16-bit cache raises: a8w8 never silently runs a16)."""
    from speedrun.overlays.mla_decode import api

    cfg = api.config_for(HEADS)
    return setup_speedrun(x, config=cfg.replace(a8w8=cfg.a8w8.replace(engine="triton")), compute="a8w8")


def setup_speedrun_mxfp4(x: dict[str, Any]) -> Callable[[], torch.Tensor]:
    """Ours on the same pool as an MXFP4 cache (codes + E8M0 scales per 32, quantized untimed): what the qualifier's
    MXFP4 cases run, timed next to FlashMLA's FP8 on the same content."""
    from speedrun.overlays.mla_decode import api
    from speedrun.overlays.mla_decode.reference import quantize_kv_mxfp4

    codes, scales = quantize_kv_mxfp4(x["kv"].float())
    plan = api.make_plan(HEADS, x["q"].dtype, api.KV_MXFP4, device=x["q"].device)
    ws = plan.alloc_workspace(x["bs"], x["q"].device)
    o = torch.empty(x["bs"], HEADS, 512, dtype=torch.bfloat16, device="cuda")
    args = (x["q"], codes, o, x["indptr"], x["slots"], plan)
    return lambda: api.mla_decode(*args, sm_scale=SM_SCALE, workspace=ws, kv_scales=scales[:, 0])


def setup_sglang_triton(x: dict[str, Any]) -> Callable[[], torch.Tensor]:
    import triton
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd
    from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton

    sms, bs = torch.cuda.get_device_properties(0).multi_processor_count, x["bs"]
    # TritonAttnBackend for MLA: max(8, min(next_pow2(SMs), next_pow2(ctx / 32))) splits, then its own policy
    max_splits = max(8, min(triton.next_power_of_2(sms), triton.next_power_of_2(CONTEXT_LEN // 32)))
    splits = torch.empty(bs, dtype=torch.int32, device="cuda")
    get_num_kv_splits_triton[(1,)](splits, x["lens"], bs, 1, HEADS, 1, max_splits, sms,
                                   MAX_NUM_SEQ=max(256, triton.next_power_of_2(bs)))  # fmt: skip
    logits = torch.empty(bs, HEADS, max_splits, 512, dtype=torch.float32, device="cuda")
    lse = torch.empty(bs, HEADS, max_splits, dtype=torch.float32, device="cuda")
    o = torch.empty(bs, HEADS, 512, dtype=torch.bfloat16, device="cuda")
    kv = x["kv"]

    def run() -> torch.Tensor:
        decode_attention_fwd(x["q"], kv, kv[..., :512], o, x["indptr"], x["slots"], logits, lse, splits, max_splits,
                             SM_SCALE, 1.0, 1.0, has_mla=True, page_size=1)  # fmt: skip
        return o

    return run


def setup_flashinfer(x: dict[str, Any]) -> Callable[[], torch.Tensor]:
    from flashinfer.mla import BatchMLAPagedAttentionWrapper

    bs, kv, q = x["bs"], x["kv"], x["q"]
    wrapper = BatchMLAPagedAttentionWrapper(torch.empty(128 << 20, dtype=torch.int8, device="cuda"), backend="auto")
    qo = torch.arange(bs + 1, dtype=torch.int32, device="cuda")
    wrapper.plan(qo, x["indptr"], x["slots"].int(), x["lens"], HEADS, 512, 64, 1, False, SM_SCALE, q.dtype, kv.dtype)
    o = torch.empty(bs, HEADS, 512, dtype=torch.bfloat16, device="cuda")
    scales = {"ckv_scale": 1.0, "kpe_scale": 1.0} if kv.dtype != torch.bfloat16 else {}
    q_nope, q_pe, ckv, kpe = q[..., :512], q[..., 512:], kv[..., :512], kv[..., 512:]
    return lambda: wrapper.run(q_nope, q_pe, ckv, kpe, out=o, **scales)


def setup_flashmla(x: dict[str, Any]) -> Callable[[], torch.Tensor]:
    from sgl_kernel.flash_mla import flash_mla_with_kvcache, get_mla_metadata

    bs, kv, q = x["bs"], x["kv"], x["q"]
    fp8 = kv.dtype != torch.bfloat16
    meta, splits = get_mla_metadata(x["lens"], HEADS, 1, is_fp8_kvcache=fp8)
    q4 = (q.to(kv.dtype) if fp8 else q).view(bs, 1, HEADS, 576)
    extra = {}
    if fp8:  # as SGLang's flashmla backend: fp8 q and per-tensor descales
        one = torch.ones(1, dtype=torch.float32, device="cuda")
        extra = {"descale_q": one, "descale_k": one}
    cache = kv.view(-1, PAGE, 1, 576)
    return lambda: flash_mla_with_kvcache(q4, cache, x["block_table"], x["lens"], 512, meta, splits,
                                          softmax_scale=SM_SCALE, causal=True, **extra)[0]  # fmt: skip


SETUP = {"speedrun": setup_speedrun, "speedrun_a16": setup_speedrun_a16, "speedrun_a8w8": setup_speedrun_a8w8,
         "sglang_triton": setup_sglang_triton,
         "flashinfer": setup_flashinfer, "flashmla": setup_flashmla, MXFP4: setup_speedrun_mxfp4}  # fmt: skip


def kv_bytes(bs: int, kv_len: int | str, kv_dtype: torch.dtype, impl: str = "") -> int:
    """The cache bytes a call reads: 576 a token of its dtype's, or MXFP4's 288 code + 18 scale bytes."""
    return sum(seq_lens(bs, kv_len)) * (576 // 2 + 576 // 32 if impl == MXFP4 else 576 * kv_dtype.itemsize)


def measure(built: Built, x: dict[str, Any]) -> tuple[timer.Timing, torch.Tensor]:
    """(timing, copy 0's output [bs, heads, 512]): the impl set up on each copy of the inputs (untimed)."""
    out = built(0)()
    torch.cuda.synchronize()
    out = out.reshape(out.shape[0], HEADS, 512).clone()
    calls = kv_bytes(x["bs"], x["kv_len"], x["kv"].dtype) + x["q"].numel() * 2
    return timer.time_calls(built, calls, built.alloc_bytes), out


def _timed_fields(built: Built, x: dict[str, Any], nbytes: int, peak: float,
                  outs: list[torch.Tensor] | None = None) -> dict[str, Any]:  # fmt: skip
    """A row's timed fields; copy 0's output is appended to `outs` (the comparison between impls)."""
    t, out = measure(built, x)
    gbps, pct = report.pct_of_peak(nbytes, t.us, peak)
    if outs is not None:
        outs.append(out.float())
    return {**t.fields(), "gbps": gbps, "pct_hbm_peak": pct}


def bench_shape(bs: int, kv_len: int | str, kv_dtype: torch.dtype, impls: tuple[str, ...], gpu: str, deadline: float,
                peak: float = timer.DEFAULT_PEAK[1], emit: Emit = ignore) -> list[dict[str, Any]]:  # fmt: skip
    """Every impl at one shape; each row goes to `emit` when done (every baseline may be missing or reject a
    shape: its row records why, and the run goes on)."""
    copies = Copies(make_inputs(bs, kv_len, kv_dtype, seed=seed_of(bs, kv_len)))
    rows, ours = [], None
    for impl in impls:
        row = {"impl": impl, "bucket": BUCKET, "gpu": gpu, "bs": bs, "kv_len": kv_len, "heads": HEADS,
               "kv_dtype": "bf16" if kv_dtype == torch.bfloat16 else "fp8_e4m3", "us": None, "gbps": None,
               **({"kv_format": "mxfp4 (this fp8 pool requantized)"} if impl == MXFP4 else {})}  # fmt: skip
        if time.monotonic() > deadline:
            row.update(skipped=True, error="skipped: bench time budget spent")
        else:
            outs: list[torch.Tensor] = []
            nbytes = kv_bytes(bs, kv_len, kv_dtype, impl)
            attempt(row, partial(_timed_fields, Built(SETUP[impl], copies), copies(0), nbytes, peak, outs))
            if outs and impl == "speedrun":
                ours = outs[0]
            elif outs and ours is not None:
                row["max_diff_vs_speedrun"] = round((outs[0] - ours).abs().max().item(), 5)
        rows.append(row)
        emit(row)
        torch.cuda.empty_cache()
    del copies
    torch.cuda.empty_cache()
    report.add_speedups(rows, ("kv_dtype", "kv_len", "bs"))
    for ours in OURS_ALSO:
        report.add_speedups(rows, ("kv_dtype", "kv_len", "bs"), ours=ours)
    return rows


def shapes(quick: bool, kv_dtype: str = "all") -> list[tuple[int, int | str, torch.dtype]]:
    """Most important first (bf16, kv 8k, then the mixed batch), so a spent time budget drops the least useful rows."""
    bss = [4, 32, 256] if quick else [1, 4, 32, 64, 128, 256]
    kvs = [8192] if quick else [8192, MIXED, 1024, 32768]  # MIXED: bs 256 only (one 32k sequence among 255 of 1k)
    dts = [torch.bfloat16] if quick else [torch.bfloat16, torch.float8_e4m3fn]
    if kv_dtype != "all":  # --kv-dtype: one cache format only (fp8: the a8w8 rows next to FlashMLA's)
        dts = [torch.bfloat16 if kv_dtype == "bf16" else torch.float8_e4m3fn]
    return [(bs, kv, dt) for dt in dts for kv in kvs for bs in bss if kv != MIXED or bs == 256]


def summarize(rows: list[dict[str, Any]]) -> str:
    """Per shape: our µs, each baseline's, ours' speedup over each (baseline / ours) and ours' % of HBM peak; for
    fp8 caches one more table per alternative of ours (speedrun_a16, speedrun_a8w8), the served path among its rows."""
    keys, stock = ("kv_dtype", "kv_len", "bs"), tuple(i for i in IMPLS if i not in ("speedrun", *OURS_ALSO))
    out = report.table(rows, keys, stock)
    for ours in OURS_ALSO:
        mine = [r for r in rows if r["kv_dtype"] != "bf16"]
        if any(r["impl"] == ours for r in rows):
            out += f"\n\n{ours} as ours:\n" + report.table(mine, keys, ("speedrun", *stock), ours=ours)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speedrun.eval.png import save_png

    dts, kvs = sorted({r["kv_dtype"] for r in rows}), sorted({r["kv_len"] for r in rows if r["kv_len"] != MIXED})
    fig, axes = plt.subplots(len(dts), len(kvs), figsize=(4.5 * len(kvs), 3.6 * len(dts)), squeeze=False)
    for i, dt in enumerate(dts):
        for j, kv in enumerate(kvs):
            ax = axes[i][j]
            for impl in IMPLS:
                mine = [r for r in rows if (r["impl"], r["kv_dtype"], r["kv_len"]) == (impl, dt, kv) and r["us"]]
                pts = sorted((r["bs"], r["us"]) for r in mine)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="µs (CUDA graph, cache flushed, median)",
                   title=f"MLA decode, 16 heads, {dt} KV, kv {kv}")  # fmt: skip
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


@dataclass(frozen=True)
class SweepCell:
    """One (shape, cache dtype) of the sweep: each variant with the earlier variant that runs the very same kernels
    on this cache (`same_as`: its row copies that time instead of re-timing it; None: timed)."""

    bs: int
    kv_len: int | str
    dtype: torch.dtype
    runs: tuple[tuple[str, str | None], ...]

    @property
    def timed(self) -> int:
        return sum(same is None for _, same in self.runs)


def kernels_of(cfg: MlaBucket, dt: torch.dtype, arch: str) -> str:
    """What a variant launches on this cache (constexprs, launch options, split width, merge knobs, PDL): two
    variants with the same string run the same kernels the same way (an fp8-only variant on a bf16 cache; `a16` on
    sm90). PDL is the knob itself: the plan made here, on the CPU, resolves it off."""
    from speedrun.overlays.mla_decode import api

    plan = api.make_plan(HEADS, torch.bfloat16, dt, device="cpu", arch=arch, config=cfg)
    c = plan.cfg
    return repr((plan.partial, plan.partial_opts, plan.merge_opts, plan.programs, plan.block_h,
                 c.BLOCK_N, c.min_chunk, c.merge, c.pdl))  # fmt: skip


def sweep_plan(arch: str, variants: tuple[str, ...] = tuple(VARIANTS)) -> list[SweepCell]:
    """The sweep's cells, most important first: every fp8 shape (round 5's questions are all fp8), then bf16, so a
    spent budget drops bf16 shapes. A variant that runs another's kernels on a cache is not timed again."""
    cells = []
    for dt in (torch.float8_e4m3fn, torch.bfloat16):
        seen: dict[str, str] = {}
        runs = []
        for variant in variants:
            key = kernels_of(variant_config(variant, arch), dt, arch)
            runs.append((variant, seen.get(key)))
            seen.setdefault(key, variant)
        cells += [SweepCell(bs, kv_len, dt, tuple(runs)) for bs, kv_len in SWEEP_SHAPES]
    return cells


def sweep(gpu: str, peak: float = timer.DEFAULT_PEAK[1], emit: Emit = ignore,
          variants: tuple[str, ...] = tuple(VARIANTS)) -> list[dict[str, Any]]:  # fmt: skip
    """Every variant on the key shapes, fp8 then bf16; prints the best variant per shape; each row goes to `emit`.
    A shape is started only if the time left covers what the previous one took, so every shape the rows have is
    complete (the tuner compares a variant only on shapes it shares with the current config)."""
    from speedrun.overlays.arch import current_arch

    rows, deadline, last_s = [], time.monotonic() + SWEEP_BUDGET_S, 0.0
    for cell in sweep_plan(current_arch(), variants):
        bs, kv_len, dt = cell.bs, cell.kv_len, cell.dtype
        name = "bf16" if dt == torch.bfloat16 else "fp8_e4m3"
        t0 = time.monotonic()
        skip = t0 + last_s > deadline
        copies = None if skip else Copies(make_inputs(bs, kv_len, dt, seed=seed_of(bs, kv_len)))
        done: dict[str, dict[str, Any]] = {}
        for variant, same in cell.runs:
            cfg = variant_config(variant)  # the whole bucket config, so a tuner can write the winner back
            row = {"impl": "speedrun", "bucket": BUCKET, "variant": variant, "config": cfg.entry(), "gpu": gpu,
                   "bs": bs, "kv_len": kv_len, "heads": HEADS, "kv_dtype": name, "us": None}  # fmt: skip
            if skip:
                row["error"] = "TimeoutError: skipped: sweep time budget spent"
            elif same is not None:  # the same kernels as `same`: its time, said so
                row.update({k: v for k, v in done[same].items() if k not in row or k == "us"}, same_as=same)
            else:
                built = Built(lambda x, cfg=cfg: setup_speedrun(x, cfg), copies)
                attempt(row, partial(_timed_fields, built, copies(0), kv_bytes(bs, kv_len, dt), peak))
                torch.cuda.empty_cache()
            done[variant] = row
            rows.append(row)
            emit(row)
        del copies
        torch.cuda.empty_cache()
        last_s = last_s if skip else time.monotonic() - t0
        print(sweep_line(rows, name, bs, kv_len), flush=True)
    return rows


def sweep_line(rows: list[dict[str, Any]], dt: str, bs: int, kv_len: int) -> str:
    mine = [r for r in rows if (r["kv_dtype"], r["bs"], r["kv_len"]) == (dt, bs, kv_len)]
    ok = sorted((r["us"], r["variant"]) for r in mine if r.get("us"))
    cells = " ".join(f"{r['variant']}={r.get('us', 'err')}" for r in mine)
    best = f"best {ok[0][1]} {ok[0][0]} µs" if ok else "all failed"
    return f"sweep {dt} bs={bs} kv={kv_len}: {best} | {cells}"


def parse_shape(text: str) -> tuple[int, int | str, torch.dtype]:
    try:
        bs, kv, dt = text.split(":")
        return int(bs), kv if kv == MIXED else int(kv), {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[dt]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected BS:KV:DTYPE, KV a length or {MIXED}, DTYPE "
                                         "bf16|fp8 (e.g. 4:1024:bf16)") from None  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="bf16, kv 8k, bs 4/32/256 only")
    ap.add_argument("--shape", type=parse_shape, action="append", help="BS:KV:DTYPE (repeatable): only these")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma list, default all: {','.join(IMPLS)}")
    ap.add_argument("--sweep", action="store_true", help="time config variants of our kernel (for tuning)")
    ap.add_argument("--kv-dtype", choices=("all", "bf16", "fp8"), default="all", help="main table: these caches")
    ap.add_argument("--variants", help="--sweep: only these (comma list; `default`, the table as served, always)")
    args = ap.parse_args(argv)
    variants = tuple(dict.fromkeys(["default", *args.variants.split(",")])) if args.variants else tuple(VARIANTS)
    if bad := [v for v in variants if v not in VARIANTS]:
        print(f"--variants: unknown {bad}; expected some of {', '.join(VARIANTS)}")
        return 2
    impls = tuple(args.impls.split(","))
    if bad := [i for i in impls if i not in IMPLS]:
        print(f"--impls: unknown {bad}; expected some of {', '.join(IMPLS)}")
        return 2
    if not torch.cuda.is_available():
        print("mla_decode bench needs a GPU")
        return 2
    gpu = torch.cuda.get_device_name(0)
    peak_name, peak = timer.hbm_peak(gpu)
    meta = {"op": "mla_decode", "gpu": gpu, "hbm_peak_Bps": peak, "hbm_peak_of": peak_name, "sm_scale": SM_SCALE,
            "page_size": PAGE, "timing": timer.method_meta(timer.device_cache_bytes()),
            "speedup_vs": "baseline us / our us (> 1: ours faster)",
            "bytes": "cached latent rows only: 1152 B/token bf16, 576 B/token fp8"}  # fmt: skip
    if args.sweep:
        with recording(args.out / "mla_decode_sweep.json", meta) as res:
            rows = sweep(gpu, peak, emit=res.add, variants=variants)
            res.meta["best"] = best = {}
            for r in sorted((r for r in rows if r.get("us")), key=lambda r: r["us"]):
                best.setdefault(f"{r['kv_dtype']} bs={r['bs']} kv={r['kv_len']}", f"{r['variant']} {r['us']} µs")
        print("\n".join(f"best {k}: {v}" for k, v in best.items()))
        return 0
    deadline = time.monotonic() + BUDGET_S
    with recording(args.out / "mla_decode.json", meta, plot, summarize) as res:
        for bs, kv_len, dt in args.shape or shapes(args.quick, args.kv_dtype):
            run = impls if dt.itemsize == 1 else tuple(i for i in impls if i not in OURS_ALSO)
            rows = bench_shape(bs, kv_len, dt, run, gpu, deadline, peak, emit=res.add)
            done = ", ".join(f"{r['impl']}={r.get('us')}" for r in rows)
            print(f"done bs={bs} kv={kv_len} {dt}: {done}", flush=True)
    return 0 if all(r.get("us") or r.get("skipped") for r in res.rows if r["impl"] == "speedrun") else 1


if __name__ == "__main__":
    raise SystemExit(main())
