"""Test-side fixes for two Triton 3.6 interpreter bugs our kernels hit on the CPU (never used on a GPU):

1. `range(...)` bounds: the interpreter calls `int()` on a 1-element array, which numpy >= 2.4 rejects.
2. `tl.dot` on bf16: bf16 is stored as uint16 and the interpreter multiplies the raw integers.
Both patches are idempotent and only touch the interpreter's own builder.
"""

from __future__ import annotations

import numpy as np


def _bf16_to_f32(data: np.ndarray) -> np.ndarray:
    return (data.astype(np.uint32) << 16).view(np.float32)


def patch_interpreter() -> None:
    from triton.runtime import interpreter

    if getattr(interpreter, "_speedrun_mla_patched", False):
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patched_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    builder = interpreter.InterpreterBuilder
    create_dot = builder.create_dot

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        import triton.language as tl

        if a.dtype.scalar == tl.bfloat16:
            a = interpreter.TensorHandle(_bf16_to_f32(a.data), tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = interpreter.TensorHandle(_bf16_to_f32(b.data), tl.float32)
        return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    interpreter._patch_lang_tensor = patched_tensor
    builder.create_dot = patched_dot
    interpreter._speedrun_mla_patched = True
