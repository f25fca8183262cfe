"""The plugin's building blocks: one `Hook` row per SGLang target, and the AROUND wrapper that
falls back to stock SGLang (and says so in the report) whenever our implementation declines."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from speedrun.overlays import report


class Unsupported(Exception):
    """Raised by an overlay implementation for a case it does not serve; the hook then runs stock SGLang."""


@dataclass(frozen=True)
class Hook:
    op: str  # overlay op (or "synthetic" for the weight filler)
    target: str  # dotted path inside sglang, resolved by SGLang's HookRegistry
    fn: Callable[..., Any]  # hook function, signature depends on `kind`
    kind: str = "around"  # around | after | before | replace (HookType names)
    when: str = "always"  # human-readable condition, shown in the report and the README table


def require_aiter(op: str) -> None:
    """`backend: aiter` is ROCm-only: on CUDA, or on ROCm without an importable aiter, a clear error (the server
    stops at load time) instead of a silent fallback to stock."""
    import importlib.util

    import torch

    var = f"{op}: backend aiter"
    if getattr(torch.version, "hip", None) is None:
        raise RuntimeError(f"{var} needs ROCm with aiter; this torch is not a ROCm build: use triton or reference")
    if importlib.util.find_spec("aiter") is None:
        raise RuntimeError(f"{var}: aiter is not importable on this ROCm machine (pip install aiter), or use triton")


def around(op: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    """AROUND hook: run `impl(original, *args, **kwargs)`; on `Unsupported`, run the original.

    Every call is counted in the per-process report under `op/impl`; every distinct fallback reason is
    recorded once (with a count), so an op that silently never runs shows up as fallbacks, not as nothing.
    """
    name = f"{op}/{impl.__name__}"

    @functools.wraps(impl)
    def hook(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            out = impl(original, *args, **kwargs)
        except Unsupported as why:
            report.fallback(op, name, str(why))
            return original(*args, **kwargs)
        report.called(name)
        return out

    return hook


# What HookRegistry passes before the wrapped function's own arguments, per hook kind.
_PREPENDED = {"around": 1, "after": 1, "before": 0, "replace": 0}


def expected_signature(fn: Callable[..., Any], kind: str) -> inspect.Signature | None:
    """The signature a hook expects of the SGLang function it wraps: its own (the `around` impl's, through
    functools.wraps) less what HookRegistry prepends (`original`, `result`). None for registry hooks."""
    if kind not in _PREPENDED:
        return None
    params = list(inspect.signature(fn).parameters.values())[_PREPENDED[kind] :]
    return inspect.Signature([p.replace(annotation=inspect.Parameter.empty) for p in params])


def binding_problem(stock: inspect.Signature, expected: inspect.Signature) -> str | None:
    """Why calls made to SGLang's function (`stock`) would not reach the hook as it expects (`expected`):
    the hook's named positional parameters must be stock's, in order; what stock has beyond them must be
    taken by the hook's *args / **kwargs. None when they bind."""
    P = inspect.Parameter
    positional = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    kinds = {p.kind for p in expected.parameters.values()}
    s_pos = [p for p in stock.parameters.values() if p.kind in positional]
    e_pos = [p for p in expected.parameters.values() if p.kind in positional]
    for i, p in enumerate(e_pos):
        if i >= len(s_pos):
            if p.default is P.empty:
                return f"hook expects parameter {p.name!r}, which stock {stock} lacks"
        elif s_pos[i].name != p.name:
            return f"parameter {i + 1} is {s_pos[i].name!r} in stock {stock}, the hook expects {p.name!r}"
    if P.VAR_POSITIONAL not in kinds and (
        len(s_pos) > len(e_pos) or any(p.kind == P.VAR_POSITIONAL for p in stock.parameters.values())
    ):
        return f"stock {stock} takes more positional arguments than the hook {expected}"
    names = {p.name for p in expected.parameters.values()}
    extra = [p.name for p in stock.parameters.values() if p.kind in (P.KEYWORD_ONLY, P.VAR_KEYWORD)]
    if P.VAR_KEYWORD not in kinds and any(n not in names for n in extra):
        return f"stock {stock} takes keywords the hook {expected} does not"
    return None
