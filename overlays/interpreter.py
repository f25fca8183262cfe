"""Test-side shims for Triton 3.6's CPU interpreter, shared by every op's CPU tests (kernels are unchanged;
GPU runs never import this).

1. A scalar is a 1-element array and `range(...)` bounds call `int()` on it, which numpy >= 2.4 rejects
   ("only 0-dimensional arrays can be converted to Python scalars").
2. `tl.dot` on bf16 operands multiplies the raw uint16 storage (bf16 is stored as uint16); we widen bf16
   operands to fp32 first, which is exact.
3. fp32 -> bf16 casts truncate; GPUs round to nearest even, and so do we (through torch).
4. fp32/f16 -> fp8 casts have the exponent off by one and truncate; GPUs round to nearest even and saturate to
   the finite range (cvt.rn.satfinite), and so do we (through torch).
Idempotent. Also `LaunchRecorder` / `options_of`: what a CPU test can check of a launch it cannot run.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch


def _bf16_to_f32(data: np.ndarray) -> np.ndarray:
    return (data.astype(np.uint32) << 16).view(np.float32)


def patch() -> None:
    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(interpreter, "_speedrun_patched", False):
        return
    patch_lang_tensor = interpreter._patch_lang_tensor

    def patched_lang_tensor(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    create_dot = interpreter.InterpreterBuilder.create_dot

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype == tl.bfloat16:
            a = interpreter.TensorHandle(_bf16_to_f32(a.data), tl.float32)
        if b.dtype == tl.bfloat16:
            b = interpreter.TensorHandle(_bf16_to_f32(b.data), tl.float32)
        return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    cast_impl = interpreter.InterpreterBuilder.cast_impl

    def patched_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rne = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).to(torch.bfloat16)
            return interpreter.TensorHandle(rne.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    fp_to_fp = interpreter.InterpreterBuilder.create_fp_to_fp
    fp8 = {tl.float8e4nv: torch.float8_e4m3fn, tl.float8e4b8: torch.float8_e4m3fnuz, tl.float8e5: torch.float8_e5m2}

    def patched_fp_to_fp(self, src, dst_type, rounding_mode):
        target = fp8.get(dst_type.scalar)
        if target is None or src.dtype.scalar not in (tl.float32, tl.float16):
            return fp_to_fp(self, src, dst_type, rounding_mode)
        x = torch.from_numpy(np.ascontiguousarray(src.data).astype(np.float32))
        fmax = torch.finfo(target).max
        x = torch.where(x.isnan(), x, x.clamp(-fmax, fmax)).to(target)
        return interpreter.TensorHandle(x.view(torch.uint8).numpy(), dst_type.scalar)

    interpreter.InterpreterBuilder.create_fp_to_fp = patched_fp_to_fp
    interpreter.InterpreterBuilder.cast_impl = patched_cast
    interpreter.InterpreterBuilder.create_fp_trunc = lambda self, src, dst_type: patched_cast(self, src, dst_type)
    interpreter._patch_lang_tensor = patched_lang_tensor
    interpreter.InterpreterBuilder.create_dot = patched_dot
    interpreter._speedrun_patched = True


class LaunchRecorder:
    """Stands in for a @jit kernel the interpreter cannot run (Gluon): `kernel[grid](*args, **kw)` records the call,
    so a CPU test can hold a launch's arguments against the real kernel's signature (`options_of`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kw: self.calls.append((grid, args, kw))


def options_of(kernel: Any, args: tuple, kw: dict) -> set[str]:
    """The keywords of a recorded launch that are not `kernel`'s parameters (its launch options), once every
    parameter without a default has exactly one value; AssertionError naming what is missing or given twice."""
    params = inspect.signature(kernel.fn).parameters
    positional = set(kernel.arg_names[: len(args)])
    if twice := positional & set(kw):
        raise AssertionError(f"{kernel.fn.__name__}: {sorted(twice)} given by position and by keyword")
    needed = {k for k, p in params.items() if p.default is inspect.Parameter.empty}
    if missing := needed - positional - set(kw):
        raise AssertionError(f"{kernel.fn.__name__}: no value for {sorted(missing)}")
    return set(kw) - set(params)
