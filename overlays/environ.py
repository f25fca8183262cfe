"""Every SPEEDRUN_* environment variable the plugin reads: name, type, default and meaning, in one place.

`register()` reads them all once (`load()`) and writes the values into the per-process report; hooks read
the loaded values (`value(VAR)`) when they build their plans at load time, never per forward call. A bad
value is a ValueError naming the variable and what it expected. The launcher sets these from the recipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from speedrun.overlays.ops import BACKENDS, OPS

T = TypeVar("T")


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    name: str
    parse: Callable[[str], T]  # raises ValueError (its message says what was expected)
    default: T
    doc: str

    def get(self, env: Mapping[str, str] | None = None) -> T:
        """This variable's value in `env` (default: the process environment), parsed; unset or blank: default."""
        raw = (os.environ if env is None else env).get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{self.name}={raw!r}: {exc}") from None


def choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in values:
            raise ValueError(f"expected one of {values}")
        return raw.lower()

    return parse


def flag(raw: str) -> bool:
    return raw.lower() not in ("0", "false", "no")


def op_list(raw: str) -> list[str]:
    """`all`, `none`/`off`/`0`, or a comma list of known ops."""
    if raw.lower() in ("0", "none", "off"):
        return []
    if raw.lower() == "all":
        return list(OPS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if n not in OPS]
    if bad:
        raise ValueError(f"unknown op(s) {bad}; known: {', '.join(OPS)} or 'all'")
    return names


VARS: dict[str, EnvVar[Any]] = {}


def _add(var: EnvVar[T]) -> EnvVar[T]:
    VARS[var.name] = var
    return var


OVERLAYS = _add(EnvVar("SPEEDRUN_OVERLAYS", op_list, [], "ops to overlay: a comma list, `all`, or unset (none)"))
SYNTHETIC_FILL = _add(EnvVar("SPEEDRUN_SYNTHETIC_FILL", flag, False, "refill --load-format dummy weights sanely"))
SEED = _add(EnvVar("SPEEDRUN_SEED", int, 0, "seed of the synthetic weight filler (same on both sides)"))
REPORT_DIR = _add(EnvVar("SPEEDRUN_REPORT_DIR", str, None, "folder for the per-process JSON reports (unset: none)"))
BACKEND = {
    op: _add(EnvVar(f"SPEEDRUN_{op.upper()}_BACKEND", choice(*BACKENDS), "triton", f"{op} implementation"))
    for op in OPS
}
MLA_DECODE_COMPUTE = _add(
    EnvVar("SPEEDRUN_MLA_DECODE_COMPUTE", choice("a8w8", "a16"), None,
           "how fp8 KV caches compute (recipe overlays.mla_decode.compute); unset: each config bucket's fp8_compute")
)  # fmt: skip
MXFP4_MOE_LAYOUT = _add(
    EnvVar("SPEEDRUN_MXFP4_MOE_LAYOUT", choice("swz", "plain"), None,
           "expert value layout: swz (mx.layout swz128) or plain; unset: swz on CUDA, plain on ROCm")
)  # fmt: skip
MXFP4_GEMM_AITER_KERNEL = _add(
    EnvVar("SPEEDRUN_MXFP4_GEMM_AITER_KERNEL", choice("a4w4", "afp4wfp4"), "a4w4", "aiter GEMM kernel (ROCm)")
)

_loaded: dict[str, Any] | None = None


def load(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read every registered variable now (register() does, once per process): {name: value}."""
    global _loaded
    _loaded = {name: var.get(env) for name, var in VARS.items()}
    return dict(_loaded)


def reset() -> None:
    """Forget the loaded values (tests: the next `value` reads the environment again)."""
    global _loaded
    _loaded = None


def value(var: EnvVar[T]) -> T:
    """The value loaded at registration (loaded now if nothing was: benches, tests)."""
    if _loaded is None:
        load()
    assert _loaded is not None
    return _loaded[var.name]


def table() -> list[tuple[str, str, str]]:
    """(name, default, meaning) per variable: for docs and `--help` texts."""
    return [(v.name, repr(v.default), v.doc) for v in VARS.values()]


__all__ = ["BACKEND", "VARS", "EnvVar", "load", "reset", "table", "value"]
