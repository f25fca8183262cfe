"""MXFP4 GEMM benchmark (one run, one GPU): ours vs stock SGLang's FP8 block GEMM, dequant+cuBLAS and bf16 cuBLAS.

impl `speedrun`: our GEMM from bf16 activations, MXFP4 activation quantization included (route per config), on
  weights re-laid out as the sm90 hook leaves them at load time. Its rows carry `bucket` and `route` (the route the
  plan runs; `route_why` when the table's stock_fp8 fell back to dequant_w): on sm90 with DeepGEMM every M > 1024
  row (the prefill shapes, M 4096 / 16384) is route stock_fp8, timed with its per-call FP8 weight conversion.
impl `fp8_deepgemm`: the baseline that matters for DeepSeek-R1 — stock SGLang 0.5.17 serves the FP8 checkpoint's
  block-quantized linears on sm90 with `fp8_utils.deepgemm_w8a8_block_fp8_linear_with_fallback`, chosen by
  `fp8_utils.dispatch_w8a8_block_fp8_linear` (auto backend) in `fp8.Fp8LinearMethod.__init__`; the per-token-group
  FP8 activation quantization is inside the call (mxfp4_gemm_baselines.py says why this function).
impl `fp8_triton`: what that dispatcher returns without deep_gemm (`triton_w8a8_block_fp8_linear`).
impl `dequant_cublas`: W dequantized to bf16 in torch on every call (LUT gather + scale), then torch.matmul.
impl `bf16_cublas`: torch.matmul with weights dequantized beforehand (the bf16 compute ceiling; no quantization).
FP8 rows run on the DeepSeek-R1 TP8-slice shapes (M 1, 16, 64, 4096, plus the brief's M on those (N, K)). Every
row multiplies the same matrix (the FP8 weights carry the MXFP4 values exactly) and reports `rel_err` against an
fp32 product.
Timing: eval/kernels/timer.py for every impl (CUDA graph of N calls on N distinct copies, L2 flushed before each
replay, median with p10/p90 per call); each row carries its `timing` block. GB/s counts minimal bytes per impl:
W (MXFP4 N*K/2 + N*K/32; FP8 N*K + scales; bf16 N*K*2) + bf16 A + bf16 C; % of HBM peak from the device name.
`--sweep` times the variants (SWEEP_VARIANTS) at SWEEP_SHAPES and writes DIR/mxfp4_gemm_sweep.json: rows carry
`bucket` (the M bucket key in configs/<arch>.json, `m<=N`), `nk` (the weight shape, "<N>x<K>": the prefix of a
per-shape override), `variant`, `config` (the full dict) and `us`; the best per shape is printed.

python -m speedrun.eval.kernels.mxfp4_gemm_bench --out DIR [--shape MxNxK ...]   -> DIR/mxfp4_gemm.json, .png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

import torch

from speedrun.eval.kernels import mxfp4_gemm_baselines as baselines
from speedrun.eval.kernels import report, timer
from speedrun.eval.kernels.results import FAILURES, Emit, attempt, ignore, recording
from speedrun.eval.kernels.timer import Copies, Timing
from speedrun.overlays.mxfp4_gemm.config import GemmBucket, GemmKnobs, Layout, Route

# GEMM shapes (M, N, K) the MXFP4 linear layers see: the brief's list and DeepSeek-R1 (TP=1) linears.
BRIEF = [(4, 2880, 512), (16, 2112, 7168), (32, 4096, 512), (32, 2880, 512), (64, 7168, 2048), (256, 3072, 1536)]

# DeepSeek-R1 / V3 at TP=1: (N, K) of each quark MXFP4 linear (hidden 7168, q_lora 1536, kv_lora 512, 128 heads).
DEEPSEEK_NK = {
    "fused_qkv_a": (2112, 7168),  # q_a (1536) + kv_a_with_mqa (576)
    "q_b": (24576, 1536),  # 128 heads x 192
    "kv_b": (32768, 512),  # 128 heads x (128 nope + 128 v); prefill (MHA) path only
    "o_proj": (7168, 16384),
    "shared_gate_up": (4096, 7168),  # 2 x moe_intermediate 2048
    "shared_down": (7168, 2048),
    "dense_gate_up": (36864, 7168),  # first 3 layers, 2 x 18432
    "dense_down": (7168, 18432),
}

PREFILL_M = (4096, 16384)
PREFILL_NK = [DEEPSEEK_NK["fused_qkv_a"], DEEPSEEK_NK["q_b"], DEEPSEEK_NK["o_proj"]]

DECODE_M = (1, 16, 64)
TP = 8  # the DeepSeek-R1 slice one GPU of a TP8 server holds
COLUMN_PARALLEL = ("q_b", "kv_b", "dense_gate_up")  # N split over the TP ranks
ROW_PARALLEL = ("o_proj", "dense_down")  # K split; fused_qkv_a is replicated
# At TP8 stock fuses the shared expert into the MoE (E=257, top-9: the MoE bench), so shared_* are not linears there.
TP8_M = (*DECODE_M, 4096)
IMPLS = ("speedrun", "fp8_deepgemm", "fp8_triton", "dequant_cublas", "bf16_cublas")
BASELINES = IMPLS[1:]
W_FMT = {"speedrun": "mxfp4", "dequant_cublas": "mxfp4", "fp8_deepgemm": "fp8", "fp8_triton": "fp8",
         "bf16_cublas": "bf16", "speedrun_plain": "mxfp4"}  # fmt: skip


def deepseek_tp8_nk() -> dict[str, tuple[int, int]]:
    """(N, K) of each DeepSeek-R1 linear on one rank of TP8 (DEEPSEEK_NK is TP1)."""
    out = {"fused_qkv_a": DEEPSEEK_NK["fused_qkv_a"]}
    out |= {name: (DEEPSEEK_NK[name][0] // TP, DEEPSEEK_NK[name][1]) for name in COLUMN_PARALLEL}
    out |= {name: (DEEPSEEK_NK[name][0], DEEPSEEK_NK[name][1] // TP) for name in ROW_PARALLEL}
    return out


def fp8_shapes() -> set[tuple[int, int]]:
    """(N, K) of the DeepSeek-R1 TP8-slice linears: the FP8 rows run there (the slice the FP8 baseline serves; each
    new (N, K, M-range) JIT-compiles a DeepGEMM kernel, so not at the TP1 sizes too)."""
    return set(deepseek_tp8_nk().values())


def shapes() -> list[tuple[int, int, int]]:
    out = list(BRIEF)
    out += [(m, n, k) for (n, k) in DEEPSEEK_NK.values() for m in DECODE_M]
    out += [(m, n, k) for (n, k) in deepseek_tp8_nk().values() for m in TP8_M]
    out += [(m, n, k) for (n, k) in PREFILL_NK for m in PREFILL_M]
    return list(dict.fromkeys(out))


def impls_for(n: int, k: int) -> tuple[str, ...]:
    return IMPLS if (n, k) in fp8_shapes() else tuple(i for i in IMPLS if not i.startswith("fp8_"))


def _lut(device: torch.device) -> torch.Tensor:
    """byte -> (low value, high value) in bf16: one gather dequantizes two elements."""
    from speedrun.overlays.mx.format import E2M1_VALUES

    vals = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    b = torch.arange(256)
    return torch.stack((vals[b & 15], vals[b >> 4]), dim=-1).to(torch.bfloat16).to(device)


def torch_dequant(w: torch.Tensor, ws: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    n, kh = w.shape
    vals = lut[w.long()].view(n, kh * 2 // 32, 32)
    scale = torch.exp2(ws.float() - 127).to(torch.bfloat16)
    return (vals * scale.unsqueeze(-1)).view(n, kh * 2)


def dequant_matmul(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, torch_dequant(w, ws, lut).t())


def _bytes(m: int, n: int, k: int, w_fmt: str = "mxfp4") -> int:
    w = {"mxfp4": n * k // 2 + n * k // 32, "fp8": n * k + -(-n // 128) * (k // 128) * 4, "bf16": n * k * 2}[w_fmt]
    return w + m * k * 2 + m * n * 2


def _row(impl: str, gpu: str, m: int, n: int, k: int, t: Timing | float | None, err: str | None = None,
         peak: float = timer.DEFAULT_PEAK[1]) -> dict[str, Any]:  # fmt: skip
    """A results row; `t` a Timing (or bare µs in tests)."""
    row: dict[str, Any] = {"impl": impl, "gpu": gpu, "m": m, "n": n, "k": k, "us": None}
    if t:
        row.update(t.fields() if isinstance(t, Timing) else {"us": round(t, 2)})
        gbps, pct = report.pct_of_peak(_bytes(m, n, k, W_FMT.get(impl, "mxfp4")), row["us"], peak)
        row.update(gbps=gbps, pct_hbm_peak=pct, tflops=round(2 * m * n * k / row["us"] / 1e6, 2))
    if err:
        row["error"] = err[:300]
    return row


def weights(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 codes and E8M0 scales (2**-9 .. 2**-3) made on the GPU (fast at the big shapes)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=g)
    return packed, torch.randint(118, 125, (n, k // 32), dtype=torch.uint8, device="cuda", generator=g)


def operands(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A bf16 [M, K], W codes, W scales): copy 0 of every impl's inputs."""
    a = torch.randn(m, k, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)).bfloat16()
    return (a, *weights(n, k, seed))


Call = Callable[[], Any]
Prepared = tuple[tuple[torch.Tensor, ...], Callable[..., torch.Tensor]]  # (operands of copy 0, fn(*operands))


def ours_prepared(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, layout: Layout | str,
                  cfg: GemmBucket | None = None) -> Prepared:  # fmt: skip
    """Our GEMM on weights in `layout`, re-laid out once and planned (load time, untimed) as the hook does."""
    from speedrun.overlays.mxfp4_gemm.api import make_plan, mxfp4_gemm, relayout_weight

    n, k = w.shape[0], w.shape[1] * 2
    ops = (a, w, ws)
    if layout != Layout.PLAIN:
        w2, s2, layout = relayout_weight(w, ws, layout)
        ops = (a, w2, s2)
    plan = make_plan(n, k, layout, device=a.device, config=cfg)
    if plan.launch(a.shape[0]).route == Route.STOCK_FP8:  # our route calls stock's DeepGEMM linear
        baselines.deepgemm_setup()
    return ops, partial(mxfp4_gemm, plan=plan)


def speedrun_route(m: int, n: int, k: int, device: torch.device) -> dict[str, Any]:
    """The `bucket` and `route` the hook's plan runs a call of M tokens with (and `route_why` when the table's
    stock_fp8 runs as dequant_w here)."""
    from speedrun.overlays.mxfp4_gemm.api import bucket_key, config_arch, make_plan, weight_layout

    arch = config_arch(device)
    plan = make_plan(n, k, weight_layout(arch), device=device)
    run = plan.launch(m)
    out = {"bucket": bucket_key(m, arch), "route": str(run.route)}
    fell_back = run.quant.cfg.route == Route.STOCK_FP8 and run.route != Route.STOCK_FP8
    return out | ({"route_why": plan.stock_why} if fell_back else {})


def prepare(impl: str, a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, lut: torch.Tensor) -> Prepared:
    """Copy 0 of an impl's operands in its own format (made untimed, as at load time) and the timed function."""
    from speedrun.overlays.mxfp4_gemm.api import config_arch, weight_layout

    if impl == "speedrun":
        return ours_prepared(a, w, ws, weight_layout(config_arch(a.device)))
    if impl == "dequant_cublas":
        return (a, w, ws), partial(dequant_matmul, lut=lut)
    if impl == "bf16_cublas":
        return (a, torch_dequant(w, ws, lut)), lambda x, wb: torch.matmul(x, wb.t())
    fn = baselines.FP8_BUILDERS[impl]()  # first: a missing stock path fails before any weight is made
    return (a, *baselines.fp8_weights(torch_dequant(w, ws, lut))), fn


def _nbytes(ops: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in ops)


def measure(impl: str, prepared: Prepared, m: int, n: int, k: int) -> tuple[Timing, torch.Tensor]:
    """(timing, copy 0's output): the impl's fn on distinct copies of its operands, through the shared timer."""
    ops0, fn = prepared
    out = fn(*ops0)
    copies = Copies(ops0)
    t = timer.time_calls(lambda i: partial(fn, *copies(i)), _bytes(m, n, k, W_FMT.get(impl, "mxfp4")), _nbytes(ops0))
    return t, out


def timed_row(impl: str, gpu: str, ops: tuple[torch.Tensor, ...], lut: torch.Tensor, ref: torch.Tensor,
              peak: float) -> dict[str, Any]:  # fmt: skip
    """One impl's row at the operands' shape: its timing, GB/s and error against the fp32 product `ref`."""
    a, w, ws = ops
    m, n, k = a.shape[0], w.shape[0], a.shape[1]
    t, out = measure(impl, prepare(impl, a, w, ws, lut), m, n, k)
    row = _row(impl, gpu, m, n, k, t, peak=peak)
    row["rel_err"] = round(((out.float() - ref).norm() / ref.norm()).item(), 5)
    return row


def bench_shape(m: int, n: int, k: int, gpu: str, lut: torch.Tensor, peak: float,
                emit: Emit = ignore) -> list[dict[str, Any]]:  # fmt: skip
    """Every impl at one shape; each row goes to `emit` as soon as it is done (a failing impl: its `error`)."""
    ops = operands(m, n, k, seed=m + n)
    ref = (ops[0].float() @ torch_dequant(*ops[1:], lut).float().t()).float()  # fp32 product of the exact weights
    rows = []
    for impl in impls_for(n, k):
        row = attempt(_row(impl, gpu, m, n, k, None), partial(timed_row, impl, gpu, ops, lut, ref, peak))
        if impl == "speedrun":
            row.update(speedrun_route(m, n, k, ops[0].device))
        rows.append(row)
        emit(row)
        torch.cuda.empty_cache()
    report.add_speedups(rows, ("m", "n", "k"))
    return rows


# One row per (shape, variant): one prequant shape first (M 256: round 5's b_regs question, PERF.md), then
# DeepSeek-R1 TP8-slice decode shapes (each decode bucket, weights of 0.6-8 MB) and one big weight. Round 6 found
# bn64_bk256 1.37x at 32 x 4096 x 512 but 0.66x at 1 x 36864 x 7168: the m<=32 bucket has a long-K and a big
# weight shape too now, so its geometric mean is not one small-K shape's.
SWEEP_SHAPES = ((256, 7168, 2048), (1, 2112, 7168), (16, 2112, 7168), (64, 7168, 2048), (1, 3072, 1536),
                (16, 4608, 7168), (1, 7168, 2304), (32, 4096, 512), (32, 2112, 7168), (4, 2880, 512),
                (1, 36864, 7168), (32, 36864, 7168))  # fmt: skip
# Each variant overrides the config on the table's weight layout (sm90: swz128, with the bucket's "swz" overrides)
# unless it names "w_layout": the plain layout, the route (one fused launch vs a quantizer launch then the GEMM),
# the split-K policy (round 2's "~2 CTAs per SM" rule, none), pipeline depth, and the decode tile (round 3's
# 64 x 256, 64 x 128, two warpgroups on 128 or 256 weight rows).
WS = {"engine": "gluon_ws", "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4, "CTAS_PER_SM": 1,
      "MIN_K_TILES": 1}  # fmt: skip
SWEEP_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"w_layout": "plain"},
    # row-major swz128, the served layout before round 10 (64-row groups won 3-17% at every K >= 2048 shape, lost
    # 1-3% at K <= 1536); a layout, so impl speedrun_swz128
    "rowmajor": {"w_layout": "swz128"},
    "prequant": {"route": "prequant"},
    "old_split": {"CTAS_PER_SM": 0},
    "st3": {"num_stages": 3},
    "st6": {"num_stages": 6},
    "bn64": {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4},
    "bregs": {"b_regs": True},
    # Round 8 (sm90 AOT, mxfp4_gemm_sass): the fused A-load quantizer doubles the K loop's issue at M 64 (417
    # warp-instructions per KiB of weights vs 221 at M 16), and prequant alone waits after every wgmma (8 / 8); with
    # b_regs the prequant loop issues 209 (m<=64) / 198 (m<=32) / 168 (m<=16) per KiB with its wgmmas back to back,
    # at the same CTAs per SM. Never timed at decode sizes: M 64 is 0.56-0.74x DeepGEMM (round 8). bn256w8 made room
    # (0.68-0.98x config at every shape of rounds 6-7).
    "prequant_bregs": {"route": "prequant", "b_regs": True},
    # launched as a programmatic dependent (overlays/pdl.py), prefetching the first 512 codes of its weight rows:
    # round 10's whole-split prefetch lost 10-24% on large weights and won 17-19% on small ones (the bench's
    # back-to-back graph: a call overlaps the previous one's tail; in a server the kernel before is SGLang's norm)
    "pdl": {"pdl": True},
    # m<=32's fused kernel holds 82 registers x 256 threads: 2 CTAs per SM, one register short of 3 (allocation in
    # units of 8); capped at 80 it has no spill and 3 CTAs/SM (sm90 AOT, PERF.md round 7). m<=32 shapes only: at
    # m<=16 / m<=64 the cap spills 16 / 96 B and serializes the wgmmas.
    "m32_r80": {"maxnreg": 80},
    # Round 12 (engine gluon_ws, gluon_sm90_ws.py; sm90 AOT only so far): loader, W decoder, A quantizer and MMA in
    # warpgroups of their own, tiles handed over mbarriers; one CTA an SM (512 threads at 128 registers)
    "ws": WS,
    "ws_bn64": {**WS, "BLOCK_N": 64, "num_stages": 6},
    "ws_st6": {**WS, "num_stages": 6},
}
# Retired in round 10 (slower than the table at every decode shape in rounds 9 and 10): sk1, bn64_bk256, bn128w8.
# Variants timed only at prequant shapes (M > 64), and only they are: the decode variants tune the fused decode
# buckets, and b_regs touches only the A_MODE 0 kernel (a decode bucket's fused kernel would time as config).
PREFILL_VARIANTS = ("bregs",)
# variants timed at these Ms only (the bucket they are meant for; ws_st6's 6 slots of 64 tokens do not fit)
ONLY_M = {"m32_r80": range(17, 33), "ws_st6": range(1, 33)}
SWEEP_DECODE_MAX_M = 64  # the fused decode buckets' largest M
# Resident CTAs per SM (ptxas sm_90a registers and shared memory of the fused swz128 kernel, PERF.md) of the
# variants that change them, by bucket, for the wave-balanced split-K.
VARIANT_CTAS = {
    "st3": {"m<=16": 3, "m<=32": 2, "m<=64": 2},
    "st6": {"m<=16": 3, "m<=32": 2, "m<=64": 1},
    "bn64": {"m<=16": 6, "m<=32": 4, "m<=64": 2},
    "m32_r80": {"m<=32": 3},
}


def variant_config(base: GemmBucket, variant: str, bucket: str, layout: Layout | str
                   ) -> tuple[GemmBucket, Layout]:  # fmt: skip
    """(config, weight layout) of a sweep row. The config is in the table's own terms, as `speedrun kernels tune`
    writes winners back: the bucket's entry with the variant's knobs where they take effect, i.e. inside the
    entry's "swz" overrides when the weights are swz128 (replaced whole), else at the top level."""
    var = dict(SWEEP_VARIANTS.get(variant, {}))
    layout = Layout(var.pop("w_layout", layout))
    if bucket in VARIANT_CTAS.get(variant, {}):
        var["CTAS_PER_SM"] = VARIANT_CTAS[variant][bucket]
    if not var:
        return base, layout
    if layout != Layout.PLAIN:
        swz = base.swz.replace(**var) if base.swz is not None else GemmKnobs.checked(var, f"variant {variant}")
        return base.replace(swz=swz), layout
    return base.replace(**var), layout


SWEEP_BUDGET_S = 100.0


def sweep_variants(m: int) -> tuple[str, ...]:
    """The rows of one sweep shape: the config, then the variants that apply at its M (PREFILL_VARIANTS)."""
    prefill = m > SWEEP_DECODE_MAX_M
    return ("config", *(v for v in SWEEP_VARIANTS
                         if (v in PREFILL_VARIANTS) == prefill and (v not in ONLY_M or m in ONLY_M[v])))  # fmt: skip


def _variant_row(impl: str, gpu: str, ops: tuple[torch.Tensor, ...], cfg: GemmBucket, layout: Layout,
                 want: torch.Tensor | None, peak: float) -> dict[str, Any]:  # fmt: skip
    a, w, ws = ops
    m, n, k = a.shape[0], w.shape[0], a.shape[1]
    t, got = measure(impl, ours_prepared(a, w, ws, layout, cfg), m, n, k)
    row = _row(impl, gpu, m, n, k, t, peak=peak)
    if want is not None:
        row["max_rel_diff_vs_config"] = round(((got.float() - want).abs().max() / want.abs().max()).item(), 5)
    return row


def sweep_rows(gpu: str, peak: float, budget_s: float = SWEEP_BUDGET_S, emit: Emit = ignore,
               only: Collection[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every SWEEP_VARIANTS entry (`only`: those, with the config's row) on SWEEP_SHAPES, timed like the bench
    (tuning aid; prints the best per shape). Once `budget_s` is spent the remaining rows are written with "skipped":
    true (the device step has a hard timeout). Each row goes to `emit` when done."""
    from speedrun.overlays.mxfp4_gemm import api

    rows, t0 = [], time.time()
    for m, n, k in SWEEP_SHAPES:
        if time.time() - t0 > budget_s:
            print(f"sweep: budget {budget_s:.0f} s spent, skipping ({m},{n},{k})")
            bucket = api.bucket_key(m, api.config_arch(torch.device("cuda")))
            rows.append({**_row("speedrun", gpu, m, n, k, None), "variant": "*", "bucket": bucket, "skipped": True})
            emit(rows[-1])
            continue
        a, w, ws = operands(m, n, k, seed=n + k)
        arch = api.config_arch(a.device)
        base, table_layout, bucket = api.pick_config(m, n, k, arch), api.weight_layout(arch), api.bucket_key(m, arch)
        try:
            want = api.mxfp4_gemm(a, w, ws, api.make_plan(n, k, device=a.device, config=base)).float()
        except FAILURES:  # the config's own row records the error below
            want = None
        for name in sweep_variants(m):
            if only is not None and name != "config" and name not in only:
                continue
            cfg, layout = variant_config(base, name, bucket, table_layout)
            row: dict[str, Any] = {"variant": name, "bucket": bucket, "nk": f"{n}x{k}", "w_layout": layout,
                                   "config": cfg.entry(), "current": name == "config"}  # fmt: skip
            impl = "speedrun" if layout == table_layout else f"speedrun_{layout.value}"  # other layouts: not tunable
            if time.time() - t0 > budget_s:
                rows.append({**_row(impl, gpu, m, n, k, None), **row, "skipped": True})
            else:
                timed = partial(_variant_row, impl, gpu, (a, w, ws), cfg, layout, want, peak)
                rows.append({**attempt(_row(impl, gpu, m, n, k, None), timed), **row})
            emit(rows[-1])
            torch.cuda.empty_cache()
        done = [r for r in rows if (r["m"], r["n"], r["k"]) == (m, n, k) and r.get("us")]
        for r in sorted(done, key=lambda r: r["us"]):
            print(f"sweep ({m},{n},{k}) {r['variant']:16} {r['us']:9.2f} us {r.get('pct_hbm_peak', '-'):>5} %HBM")
        del a, w, ws
        torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speedrun.eval.png import save_png

    keys = list(dict.fromkeys((r["m"], r["n"], r["k"]) for r in rows))
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(10, len(keys) * 0.45), 5))
    for i, impl in enumerate(impls):
        us = {(r["m"], r["n"], r["k"]): r.get("us") for r in rows if r["impl"] == impl}
        xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [us.get(key) or 0 for key in keys], width=width, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("us per call (CUDA graph, L2 flushed, median)")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{m}x{n}x{k}" for m, n, k in keys], rotation=90, fontsize=7)
    ax.legend()
    ax.set_title(f"MXFP4 GEMM (M x N x K) on {rows[0]['gpu']}")
    fig.tight_layout()
    save_png(fig, path)


def summary(rows: list[dict[str, Any]]) -> str:
    """Per shape: our µs, each baseline's, ours' speedup over each (baseline / ours) and ours' % of HBM peak."""
    return report.table(rows, ("m", "n", "k"), BASELINES, extra=("route",))


def meta(gpu: str, sweep: bool) -> dict[str, Any]:
    peak_name, peak = timer.hbm_peak(gpu)
    out = {"op": "mxfp4_gemm", "gpu": gpu, "hbm_peak_Bps": peak, "hbm_peak_of": peak_name,
           "timing": timer.method_meta(timer.device_cache_bytes()),
           "bytes": "W (MXFP4 N*K/2 + N*K/32; FP8 N*K + fp32 scale per 128x128; bf16 N*K*2) + bf16 A + bf16 C",
           "speedup_vs": "baseline us / our us (> 1: ours faster)"}  # fmt: skip
    if sweep:
        out["bucket"] = "M bucket key of configs/<arch>.json (m<=N, m>N: overlays/buckets.py)"
        out["nk"] = "the weight shape <N>x<K> (the prefix of a per-shape override key <N>x<K>:m<=N)"
        out["variants"] = SWEEP_VARIANTS
    else:
        out["baselines"] = baselines.describe()
        out["rel_err"] = "|out - fp32 A.W^T| / |fp32 A.W^T| (W the exact dequantized weights)"
    return out


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected MxNxK, e.g. 16x2112x7168") from None
    return m, n, k


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--shape", type=parse_shape, action="append", help="MxNxK (repeatable): only these shapes")
    ap.add_argument("--sweep", action="store_true", help="only time the variants (tuning): DIR/mxfp4_gemm_sweep.json")
    ap.add_argument("--budget", type=float, default=SWEEP_BUDGET_S, help="sweep: seconds before skipping the rest")
    ap.add_argument("--variants", help="--sweep: only these (comma list; `config`, the table as served, always)")
    args = ap.parse_args(argv)
    only = args.variants.split(",") if args.variants else None
    if only and (bad := sorted(set(only) - set(SWEEP_VARIANTS))):
        ap.error(f"--variants: unknown {', '.join(bad)} (known: {', '.join(SWEEP_VARIANTS)})")
    if not torch.cuda.is_available():
        print("bench needs a GPU")
        return 2
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    peak = timer.hbm_peak(gpu)[1]
    t0 = time.time()
    if args.sweep:
        out = args.out / "mxfp4_gemm_sweep.json"
        with recording(out, meta(gpu, True)) as res:
            sweep_rows(gpu, peak, args.budget, emit=res.add, only=only)
        print(f"wrote {out} in {time.time() - t0:.0f} s")
        return 0 if all(r.get("us") or r.get("skipped") for r in res.rows) else 1
    lut = _lut(torch.device("cuda"))
    out = args.out / "mxfp4_gemm.json"
    with recording(out, meta(gpu, False), plot, summary) as res:
        for m, n, k in args.shape or shapes():
            rows = bench_shape(m, n, k, gpu, lut, peak, emit=res.add)
            print(f"[{time.time() - t0:.0f} s] {m}x{n}x{k}: " + ", ".join(f"{r['impl']}={r.get('us')}" for r in rows),
                  flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    print(f"wrote {out} in {time.time() - t0:.0f} s (HBM peak {peak / 1e9:.0f} GB/s nominal)")
    return 0 if all(r.get("us") for r in res.rows if r["impl"] == "speedrun") else 1


if __name__ == "__main__":
    raise SystemExit(main())
