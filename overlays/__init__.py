"""sglang-speedrun overlays: an SGLang plugin (entry point `sglang.srt.plugins`).

`register()` runs in every SGLang process that calls `load_plugins()` (the launcher, each scheduler).
It reads as a table: op -> SGLang target -> our hook -> when it applies. Nothing happens unless the settings
(overlays/environ.py: SPEEDRUN_SETTINGS from the launcher, or the loose SPEEDRUN_* variables by hand) name ops,
or ask for sane synthetic weights (synthetic_fill, which the baseline uses too). It never touches CUDA or compiles kernels: hook modules import lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from speedrun.overlays import environ, report
from speedrun.overlays.hooks import Hook
from speedrun.overlays.ops import OPS

Q = "sglang.srt.layers.quantization"

# op            SGLang target                                                      our hook (module:function)              kind      when it applies
TABLE: list[Hook | tuple] = [
    ("synthetic", "sglang.srt.model_loader.weight_utils.initialize_dummy_weights", "synthetic.hook:fill_after_dummy", "after", "--load-format dummy + synthetic_fill"),
    ("mla_decode", "sglang.srt.layers.attention.attention_registry.ATTENTION_BACKENDS", "mla_decode.sglang_hook:register_backend", "registry", "--attention-backend / --decode-attention-backend speedrun_mla on an MLA model"),
    ("mla_decode", "sglang.srt.speculative.draft_utils.DRAFT_BACKEND_ALIASES", "mla_decode.sglang_hook:alias_draft_backend", "registry", "speculative decoding: the EAGLE/MTP draft runs triton (patch 0001)"),
    ("mxfp4_moe", f"{Q}.mxfp4.Mxfp4MoEMethod.process_weights_after_loading", "mxfp4_moe.sglang_hook:gptoss_process_weights", "around", "GPT-OSS mxfp4 experts, moe runner auto|triton|triton_kernel"),
    ("mxfp4_moe", f"{Q}.mxfp4.Mxfp4MoEMethod.apply", "mxfp4_moe.sglang_hook:gptoss_apply", "around", "standard / triton_kernel / bypassed top-k output, no a2a dispatch"),
    ("mxfp4_moe", f"{Q}.quark.schemes.quark_w4a4_mxfp4_moe.QuarkW4A4MXFp4MoE.process_weights_after_loading", "mxfp4_moe.sglang_hook:quark_process_weights", "around", "quark w_mxfp4_a_mxfp4 experts"),
    ("mxfp4_moe", f"{Q}.quark.schemes.quark_w4a4_mxfp4_moe.QuarkW4A4MXFp4MoE.apply_weights", "mxfp4_moe.sglang_hook:quark_apply", "around", "standard top-k output, no a2a dispatch (EP: -1 ids skipped)"),
    ("mxfp4_gemm", f"{Q}.quark.schemes.quark_w4a4_mxfp4.QuarkW4A4MXFP4.process_weights_after_loading", "mxfp4_gemm.sglang_hook:process_weights", "around", "quark w_mxfp4_a_mxfp4 linear layers"),
    ("mxfp4_gemm", f"{Q}.quark.schemes.quark_w4a4_mxfp4.QuarkW4A4MXFP4.apply_weights", "mxfp4_gemm.sglang_hook:apply_weights", "around", "x, (x_fp4, x_scale) or (x, None, y); the 5-tuple split-cat form falls back"),
    ("mxfp4_gemm", "sglang.srt.models.deepseek_common.deepseek_weight_loader.DeepseekV2WeightLoaderMixin.post_load_weights", "mxfp4_gemm.sglang_hook:deepseek_post_load_weights", "around", "quark MXFP4 kv_b_proj left uint8 (CUDA): bf16 w_kc/w_vc for the MLA bmm"),
]  # fmt: skip

_registered: dict[str, Any] | None = None


def hooks() -> list[Hook]:
    """The table as `Hook` rows (hook functions not yet imported)."""
    return [row if isinstance(row, Hook) else Hook(*row) for row in TABLE]


def resolve(spec: str) -> Any:
    """`module:function` relative to this package -> the function (imports the op's hook module)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def register() -> dict[str, Any]:
    """SGLang plugin entry point. Idempotent; returns what it applied (also written to the report)."""
    global _registered
    if _registered is not None:
        return _registered
    settings = environ.load()  # read and validated once here; hooks use this object
    ops = list(settings.ops)
    wanted = {*ops, *(["synthetic"] if settings.synthetic_fill else [])}
    _registered = {"ops": ops, "applied": [], "failed": []}
    if not wanted:
        return _registered

    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    version = _sglang_version()
    report.start(
        **report.process_identity(),
        ops_requested=ops,
        sglang=version,
        backends={op: settings.backends[op] for op in ops},
        synthetic_fill="synthetic" in wanted,
        settings=settings.record(),
    )
    refusal = _refusal(version, wanted)
    if refusal:  # nothing is registered: stock SGLang runs, and the report says why
        _registered["refused"] = refusal[0]
        for line in refusal:
            report.error(line)
        report.record(applied=[])
        return _registered
    for row in hooks():
        if row.op not in wanted:
            continue
        try:
            fn = resolve(row.fn)
            if row.kind == "registry":
                fn()  # registers into an SGLang registry (dict / CLI choices) directly
                _registered["applied"].append(row.target)
            else:
                HookRegistry.register(row.target, fn, HookType[row.kind.upper()])
        except Exception as exc:  # every failure must reach the report
            _registered["failed"].append(row.target)
            report.error(f"{row.op}: {row.target}: {type(exc).__name__}: {exc}")
        report.add_hook({"op": row.op, "target": row.target, "hook": row.fn, "kind": row.kind, "when": row.when})

    for row in hooks():
        if row.op in wanted and row.kind != "registry" and row.target not in _registered["failed"]:
            error = _apply(HookRegistry, row.target)
            if error is None:
                _registered["applied"].append(row.target)
            else:
                _registered["failed"].append(row.target)
                report.error(f"{row.op}: {row.target}: not applied: {error}")
    report.record(applied=_registered["applied"])
    return _registered


def _apply(registry: Any, target: str) -> str | None:
    """Apply the hooks of one target now (what `HookRegistry.apply_hooks()` does per target, which only logs
    failures); returns the error text, so the report can say why. `load_plugins()` skips patched targets.
    SGLang (0.5.17 to 0.5.23) has no public per-target apply that reports its failure: this function is the
    plugin's only use of HookRegistry's private members, and speedrun.support checks them on every version."""
    if target in registry._patched:
        return None
    try:
        registry._apply_target(target, registry._hooks[target])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    registry._patched.add(target)
    return None


def _refusal(version: str | None, wanted: set[str]) -> list[str]:
    """On an SGLang outside the support matrix, check the wanted ops' hook targets on its source (static, no
    import): any missing or changed one refuses the whole plugin, here, rather than failing mid-load.
    Returns the lines for the report (empty: go ahead)."""
    from speedrun import support
    from speedrun.sglang_source import sglang_root

    known = support.release(version) in support.versions()
    findings = [] if known else support.check(sglang_root(), wanted)
    ok, line = support.verdict(version, findings)
    report.record(support=line)
    if ok:
        return []
    return [f"{line}: plugin off, stock SGLang runs", *(f.line() for f in findings if f.blocking)]


def _sglang_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:
        return None


__all__ = ["OPS", "TABLE", "Hook", "hooks", "register", "resolve"]
