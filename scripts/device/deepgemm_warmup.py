"""What stock SGLang 0.5.17's DeepGEMM pre-compile costs on this card, and what SGLANG_JIT_DEEPGEMM_FAST_WARMUP leaves
out: the evidence behind scripts/device/setup.sh's choice.

    device: source scripts/device/setup.sh && python3 scripts/device/deepgemm_warmup.py --out $OUT/dg.json \
              && python3 scripts/device/deepgemm_warmup.py --out $OUT/dg_warm.json --warm

For each (N, K) below, the way compile_utils' warm-up executor calls DeepGEMM (fp8_gemm_nt on [M, K] fp8
activations with fp32 per-token-group scales, [N, K] fp8 weights with 128x128 block scales), one M at a time:
first the fast warm-up's M list, then the rest of the full list (1..16384 at chunked_prefill_size 8192, the H100
default), noting every M that added a kernel to DeepGEMM's on-disk cache (DG_JIT_CACHE_DIR): a kernel the fast list
leaves uncompiled. `--warm`: a new process walks the full list again on that cache (what a carried cache dir would
cost). Writes seconds per phase, kernels and cache bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

CHUNK = 8192  # sglang 0.5.17's chunked_prefill_size on an 80 GB card
SHAPES = {"fused_qkv_a": (2112, 7168), "o_proj_tp8": (7168, 2048), "kv_b_tp8": (4096, 512)}


def full_ms(chunk: int = CHUNK) -> list[int]:
    """The default warm-up's Ms: every M up to 16384 (twice the chunk above 8192, 64k without chunking)."""
    top = 64 * 1024 if chunk < 1 else 2 * chunk if chunk > 8192 else 16 * 1024
    return list(range(1, min(top, 128 * 1024) + 1))


def fast_ms(chunk: int = CHUNK) -> list[int]:
    """SGLANG_JIT_DEEPGEMM_FAST_WARMUP's Ms: all of 1..1024, then from each power of two to the next in steps that
    double with it (2 from 1024, 4 from 2048, ...), up to the prefill chunk, and the chunk itself."""
    top = min(chunk, 32 * 1024) if chunk >= 1 else 16 * 1024
    ms, start, step = set(range(1, 1025)), 1024, 2
    while start < top:
        ms.update(range(start, 2 * start, step))
        start, step = 2 * start, 2 * step
    return sorted(ms | {top})


def cache_state(root: Path) -> tuple[int, int]:
    """(kernels, bytes) in DeepGEMM's cache: a kernel is a folder holding a .cubin."""
    kernels = size = 0
    for folder, _, files in os.walk(root):
        kernels += any(f.endswith(".cubin") for f in files)
        size += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return kernels, size


def walk(gemm, ms: list[int], cache: Path, deadline: float) -> dict:
    """Run every M; the Ms that added a kernel; stop (saying so) at the deadline."""
    import torch

    t0, before, new_at = time.time(), cache_state(cache)[0], []
    done = 0
    for m in ms:
        if time.time() > deadline:
            break
        gemm(m)
        done += 1
        now = cache_state(cache)[0]
        if now > before:
            new_at.append(m)
            before = now
    torch.cuda.synchronize()
    return {"ms": len(ms), "done": done, "seconds": round(time.time() - t0, 1), "new_kernel_at_m": new_at}


def executor(n: int, k: int, max_m: int):
    """fp8_gemm_nt at M rows, on buffers as sglang's warm-up allocates them (values do not matter)."""
    import deep_gemm
    import torch

    lhs = torch.empty(max_m, k, device="cuda", dtype=torch.float8_e4m3fn)
    lhs_s = torch.ones(max_m, k // 128, device="cuda", dtype=torch.float32)
    rhs = torch.empty(n, k, device="cuda", dtype=torch.float8_e4m3fn)
    rhs_s = torch.ones(-(-n // 128), k // 128, device="cuda", dtype=torch.float32)
    out = torch.empty(max_m, n, device="cuda", dtype=torch.bfloat16)
    return lambda m: deep_gemm.fp8_gemm_nt((lhs[:m], lhs_s[:m]), (rhs, rhs_s), out[:m])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dg_cache"))
    ap.add_argument("--warm", action="store_true", help="walk the full list on the cache a first run left")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before the walk stops")
    args = ap.parse_args(argv)
    os.environ["DG_JIT_CACHE_DIR"] = str(args.cache)  # as sglang sets it from SGLANG_DG_CACHE_DIR
    os.environ["DG_JIT_USE_NVRTC"] = "0"  # sglang's default: NVCC
    deadline, rows = time.time() + args.budget, {}
    full, fast = full_ms(), fast_ms()
    rest = sorted(set(full) - set(fast))
    for name, (n, k) in SHAPES.items():
        gemm = executor(n, k, max(full))
        if args.warm:
            rows[name] = {"full_on_cache": walk(gemm, full, args.cache, deadline)}
        else:
            rows[name] = {
                "fast": walk(gemm, fast, args.cache, deadline),
                "rest": walk(gemm, rest, args.cache, deadline),
            }
            missed = rows[name]["rest"]["new_kernel_at_m"]
            rows[name]["missed_within_chunk"] = [m for m in missed if m <= CHUNK]
        print(name, json.dumps(rows[name])[:600], flush=True)
    kernels, size = cache_state(args.cache)
    out = {"chunk": CHUNK, "fast_ms": len(fast), "full_ms": len(full), "cache_kernels": kernels, "cache_bytes": size,
           "shapes": rows}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "shapes"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
