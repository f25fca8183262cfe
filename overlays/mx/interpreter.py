"""Triton-interpreter compatibility for CPU tests.

Triton 3.6's interpreter turns loop bounds into Python ints with `int(ndarray)`, but every scalar there is a
1-element 1-D array and NumPy >= 2.3 refuses `int()` on those ("only 0-dimensional arrays can be converted"), so
any kernel with a runtime-bounded `for k in range(lo, hi)` fails under TRITON_INTERPRET=1. `patch()` makes the
interpreter read the single element instead. It only touches interpreted runs (the interpreter installs and
restores these attributes around each launch); compiled kernels never see it.
"""

from __future__ import annotations


def patch() -> None:
    """Idempotent: wrap the interpreter's tensor patching so `__index__` accepts 1-element arrays."""
    from triton.runtime import interpreter

    if getattr(interpreter, "_speedrun_index_patch", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._speedrun_index_patch = True
