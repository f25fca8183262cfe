"""Two small kernels of our own with `compile_specs(arch)`, so the compile report can be tested end to end
without depending on the op folders: a tiled bf16 matmul (must use the matrix unit) and an elementwise add."""

from __future__ import annotations

import triton
import triton.language as tl

from speedrun.eval.kernels.aot import CompileSpec, aligned


@triton.jit
def matmul_kernel(a, b, c, K, stride_am, stride_bk, stride_cm,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k in range(0, K, BK):
        x = tl.load(a + rm[:, None] * stride_am + (k + rk)[None, :])
        y = tl.load(b + (k + rk)[:, None] * stride_bk + rn[None, :])
        acc += tl.dot(x, y)
    tl.store(c + rm[:, None] * stride_cm + rn[None, :], acc.to(tl.bfloat16))


@triton.jit
def add_kernel(x, y, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out + offs, tl.load(x + offs, mask=mask) + tl.load(y + offs, mask=mask), mask=mask)


@triton.jit
def _masked(ptr, offs, n):
    return tl.load(ptr + offs, mask=offs < n)


@triton.jit
def add_helper_kernel(x, y, out, n, BLOCK: tl.constexpr):
    """add_kernel with its loads folded into a helper: the same machine code (fingerprint tests)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + offs, _masked(x, offs, n) + _masked(y, offs, n), mask=offs < n)


@triton.jit
def sub_kernel(x, y, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out + offs, tl.load(x + offs, mask=mask) - tl.load(y + offs, mask=mask), mask=mask)


MM_SIG = {"a": "*bf16", "b": "*bf16", "c": "*bf16", "K": "i32", "stride_am": "i32", "stride_bk": "i32",
          "stride_cm": "i32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}  # fmt: skip
ADD_SIG = {"x": "*fp32", "y": "*fp32", "out": "*fp32", "n": "i32", "BLOCK": "constexpr"}
MMA = {"gfx950": r"v_mfma_f32_\w+bf16", "sm90": r"wgmma\.mma_async|mma\.sync"}


def matmul_spec(arch: str, block: int = 64, hints: bool = True, **options) -> CompileSpec:
    attrs = aligned(MM_SIG) if hints else {}
    opts = {"num_warps": 4, "num_stages": 2, **options}
    consts = {"BM": block, "BN": block, "BK": 64}
    name = f"sample/matmul[{block}{'' if hints else ',no hints'}]"
    return CompileSpec(name, matmul_kernel, MM_SIG, consts, opts, MMA[arch], attrs)


def add_spec(expect_mma: str | None = None) -> CompileSpec:
    return CompileSpec("sample/add", add_kernel, ADD_SIG, {"BLOCK": 1024}, {"num_warps": 4}, expect_mma,
                       aligned(ADD_SIG, "x", "y", "out"))  # fmt: skip


def compile_specs(arch: str) -> list[CompileSpec]:
    return [matmul_spec(arch), add_spec()]


def bad_specs(arch: str) -> list[CompileSpec]:
    """Failures on purpose: an add that claims a matrix instruction, and a 128x128 matmul squeezed into a small
    register budget (64 VGPRs via waves_per_eu=8 on gfx950, maxnreg=96 on sm90: below ~90 ptxas refuses the
    wgmma outright) so that it spills."""
    squeeze = {"waves_per_eu": 8} if arch == "gfx950" else {"maxnreg": 96}
    return [add_spec(MMA[arch]), matmul_spec(arch, block=128, **squeeze)]


def refactor_specs(arch: str) -> list[CompileSpec]:
    """The add, the add refactored through a helper (same code), and a subtraction (other code)."""
    attrs = aligned(ADD_SIG, "x", "y", "out")
    return [add_spec()] + [CompileSpec(f"sample/{n}", fn, ADD_SIG, {"BLOCK": 1024}, {"num_warps": 4}, None, attrs)
                           for n, fn in (("add_helper", add_helper_kernel), ("sub", sub_kernel))]  # fmt: skip


def hint_specs(arch: str) -> list[CompileSpec]:
    """The same matmul with and without alignment hints (CompileSpec.attrs)."""
    return [matmul_spec(arch), matmul_spec(arch, hints=False)]
