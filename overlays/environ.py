"""The plugin's settings: one validated, frozen object (`PluginSettings`) holding every value the plugin reads.

The launcher passes it whole, as JSON in SPEEDRUN_SETTINGS (`settings.env()`). Hand launches may set the loose
SPEEDRUN_* variables registered here instead (`VARS`: one per field, one per op for the backends), which build
the same object; setting both is an error naming the loose variable (no silent precedence). `register()` reads
it once (`load()`) and writes it into the per-process report; hooks read the loaded object (`settings()`) when
they build their plans at load time, never per forward call. A bad value is a one-line ValueError naming the
field (or the loose variable) and what it expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from speedrun.overlays.ops import BACKENDS, OPS, Backend, Op

SETTINGS = "SPEEDRUN_SETTINGS"
DEFAULT_BACKEND: Backend = "triton"
MlaCompute = Literal["a8w8", "a16"]
MlaKvStore = Literal["fused", "stock"]
MoeLayout = Literal["swz", "swzg16", "swzg64", "plain"]
StockFp8 = Literal["per_call", "resident"]
GemmStockFp8 = Literal["per_call", "resident", "off"]
AiterGemmKernel = Literal["a4w4", "afp4wfp4"]


class PluginSettings(BaseModel):
    """Every value the plugin reads; the launcher builds it from the recipe (launch/command.py settings_for)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ops: tuple[Op, ...] = Field((), description="ops to overlay (loose: a comma list or `all`; unset: none)")
    backends: dict[Op, Backend] = Field(
        default_factory=dict, validate_default=True, description="implementation of each op"
    )
    mla_decode_compute: MlaCompute | None = Field(
        None, description="how fp8 KV caches compute; unset: each config bucket's fp8_compute"
    )
    mla_decode_kv_store: MlaKvStore = Field(
        "fused",
        description="how a decode step writes its latent rows into an fp8 cache: fused (one launch a layer: scale, "
        "cast and scatter) or stock (SGLang's in-place divide, cast and index_put)",
    )
    mxfp4_moe_layout: MoeLayout | None = Field(
        None,
        description="expert value layout: swz (mx.layout swz128), swzg16 / swzg64 (swz128 with rows in groups of "
        "16 / 64), or plain; unset: swzg64 on CUDA, plain on ROCm",
    )
    mxfp4_moe_stock_fp8: StockFp8 = Field(
        "per_call",
        description="experts of the large-M stock FP8 route (CUDA): converted per call into one scratch, or "
        "converted once at load and kept (resident: no conversion per prefill call, ~1.9x the MXFP4 experts' memory)",
    )
    mxfp4_gemm_stock_fp8: GemmStockFp8 = Field(
        "per_call",
        description="weights of the large-M stock FP8 route (CUDA): converted per call into one scratch, or "
        "converted once at load and kept (resident: no conversion per prefill call, 2x the MXFP4 weights' memory), "
        "or off: that route's M run dequant_w (our dequantize + cuBLAS bf16) and the server starts without "
        "DeepGEMM's warm-up of those weights' shapes (~60 s each on an H100)",
    )
    mxfp4_gemm_aiter_kernel: AiterGemmKernel = Field("a4w4", description="aiter GEMM kernel (ROCm)")
    synthetic_fill: bool = Field(False, description="refill --load-format dummy weights sanely")
    warmup: bool = Field(
        True, description="compile every kernel a served call can launch at load (overlays.warmup), not in a request"
    )
    seed: int = Field(0, description="seed of the synthetic weight filler (same on both sides)")
    report_dir: Path | None = Field(None, description="folder for the per-process JSON reports (unset: none)")

    @field_validator("backends")
    @classmethod
    def _every_op(cls, given: dict[str, Backend]) -> dict[str, Backend]:
        """Every op named (unnamed: triton), so the launcher's object and a hand launch's compare equal."""
        return {op: given.get(op, DEFAULT_BACKEND) for op in OPS}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginSettings:
        """The settings in `env` (default: this process's environment): SPEEDRUN_SETTINGS, else the loose
        variables. ValueError (one line) on a bad value or on both being set."""
        env = os.environ if env is None else env
        text = env.get(SETTINGS, "").strip()
        if not text:
            return _from_loose(env)
        loose = [name for name in VARS if env.get(name, "").strip()]
        if loose:
            raise ValueError(
                f"{loose[0]} is set as well as {SETTINGS}: unset {loose[0]} ({SETTINGS}, which the launcher "
                "passes, carries every setting; the loose variables are for hand launches)"
            )
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"{SETTINGS}: " + "; ".join(_where(e) + _what(e) for e in exc.errors())) from None

    def env(self) -> dict[str, str]:
        """What the launcher sets: the one variable."""
        return {SETTINGS: self.model_dump_json()}

    def record(self) -> dict[str, Any]:
        """For the per-process report."""
        return self.model_dump(mode="json")


def _where(err: ErrorDetails) -> str:
    return ".".join(map(str, err["loc"])) + ": " if err["loc"] else ""


def _what(err: ErrorDetails) -> str:
    if err["type"] == "literal_error":
        return f"expected {err['ctx']['expected']}, got {err['input']!r}"
    if err["type"] == "extra_forbidden":
        return f"not a setting (known: {', '.join(PluginSettings.model_fields)})"
    if err["type"] == "json_invalid":
        return err["msg"]
    return f"{err['msg']} (got {err['input']!r})"


# ---------------------------------------------------------------- the loose variables (hand launches)
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


@dataclass(frozen=True)
class EnvVar:
    """A loose variable: the settings field it sets (`key`: the op, for a backend) and how its text reads; the
    field holds the type, default and doc."""

    name: str
    field: str
    parse: Callable[[str], Any] = str.lower  # ValueError (its message says what was expected); the field checks
    key: str | None = None

    @property
    def default(self) -> Any:
        if self.key:
            return DEFAULT_BACKEND
        return PluginSettings.model_fields[self.field].get_default(call_default_factory=True)

    @property
    def doc(self) -> str:
        if self.key:
            return f"{self.key} implementation: {' | '.join(BACKENDS)}"
        return PluginSettings.model_fields[self.field].description or ""


VARS: dict[str, EnvVar] = {}


def _add(var: EnvVar) -> EnvVar:
    VARS[var.name] = var
    return var


OVERLAYS = _add(EnvVar("SPEEDRUN_OVERLAYS", "ops", op_list))
BACKEND = {op: _add(EnvVar(f"SPEEDRUN_{op.upper()}_BACKEND", "backends", key=op)) for op in OPS}
MLA_DECODE_COMPUTE = _add(EnvVar("SPEEDRUN_MLA_DECODE_COMPUTE", "mla_decode_compute"))
MLA_DECODE_KV_STORE = _add(EnvVar("SPEEDRUN_MLA_DECODE_KV_STORE", "mla_decode_kv_store"))
MXFP4_MOE_LAYOUT = _add(EnvVar("SPEEDRUN_MXFP4_MOE_LAYOUT", "mxfp4_moe_layout"))
MXFP4_MOE_STOCK_FP8 = _add(EnvVar("SPEEDRUN_MXFP4_MOE_STOCK_FP8", "mxfp4_moe_stock_fp8"))
MXFP4_GEMM_STOCK_FP8 = _add(EnvVar("SPEEDRUN_MXFP4_GEMM_STOCK_FP8", "mxfp4_gemm_stock_fp8"))
MXFP4_GEMM_AITER_KERNEL = _add(EnvVar("SPEEDRUN_MXFP4_GEMM_AITER_KERNEL", "mxfp4_gemm_aiter_kernel"))
SYNTHETIC_FILL = _add(EnvVar("SPEEDRUN_SYNTHETIC_FILL", "synthetic_fill", flag))
SEED = _add(EnvVar("SPEEDRUN_SEED", "seed", str))
WARMUP = _add(EnvVar("SPEEDRUN_WARMUP", "warmup", flag))
REPORT_DIR = _add(EnvVar("SPEEDRUN_REPORT_DIR", "report_dir", str))


def _from_loose(env: Mapping[str, str]) -> PluginSettings:
    """The settings from the loose variables; unset or blank: the field's default. Errors name the variable."""
    given: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for var in VARS.values():
        text = env.get(var.name, "").strip()
        if not text:
            continue
        raw[var.name] = text
        try:
            value = var.parse(text)
        except ValueError as exc:
            raise ValueError(f"{var.name}={text!r}: {exc}") from None
        if var.key:
            given.setdefault(var.field, {})[var.key] = value
        else:
            given[var.field] = value
    try:
        return PluginSettings.model_validate(given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            var = _var_at(err["loc"])
            lines.append(f"{var.name}={raw[var.name]!r}: {_what(err)}")
        raise ValueError("; ".join(lines)) from None


def _var_at(loc: tuple[int | str, ...]) -> EnvVar:
    """The loose variable behind an error's field path (("backends", "mla_decode") -> its backend variable)."""
    return next(v for v in VARS.values() if v.field == loc[0] and (v.key is None or loc[1:2] == (v.key,)))


# ---------------------------------------------------------------- the loaded settings (one per process)
_loaded: PluginSettings | None = None


def load(env: Mapping[str, str] | None = None) -> PluginSettings:
    """Read and validate the settings now (register() does, once per process)."""
    global _loaded
    _loaded = PluginSettings.from_env(env)
    return _loaded


def settings() -> PluginSettings:
    """The settings loaded at registration (loaded now if nothing was: benches, tests, the fake server)."""
    return _loaded if _loaded is not None else load()


def reset() -> None:
    """Forget the loaded settings (tests: the next `settings()` reads the environment again)."""
    global _loaded
    _loaded = None


def table() -> list[tuple[str, str, str]]:
    """(name, default, meaning) per loose variable: for docs and `--help` texts."""
    return [(v.name, repr(v.default), v.doc) for v in VARS.values()]


__all__ = ["BACKEND", "SETTINGS", "VARS", "EnvVar", "PluginSettings", "load", "reset", "settings", "table"]
