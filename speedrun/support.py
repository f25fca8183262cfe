"""The support matrix: the SGLang versions the plugin is checked on (one patch series each, CI runs the
checks on every one's real source), and what an SGLang source tree lacks of what the hooks need.

Checked statically (ast, via `sglang_source`), so it runs where SGLang cannot be imported: every hook
target's module, class and attribute, the signature of each function a hook wraps against the one the hook
expects, and the HookRegistry internals `register()` uses. `doctor` shows it; the plugin refuses on a version
outside the matrix when a target is missing (`overlays.register`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from speedrun import patching
from speedrun.sglang_source import find, signature

if TYPE_CHECKING:  # rich only for `doctor`: the plugin imports this module in every SGLang process
    from rich.table import Table

# The serving stack `doctor` compares against: what the GPU proof ran ("-": shown, not pinned).
STACK_PINS = {
    "sglang": "0.5.17",
    "torch": "2.11.0",
    "triton": "3.6.0",
    "sglang-kernel": "0.4.5",
    "flashinfer-python": "0.6.15.post1",
    "transformers": "5.12.1",
    "aiter": "-",
}

# What `speedrun.overlays.register()` / `_apply()` use of SGLang's plugin machinery (not in the hook table).
HR = "sglang.srt.plugins.hook_registry"
PLUGIN_API = [
    f"{HR}.HookType",
    *(f"{HR}.HookRegistry.{a}" for a in ("register", "_apply_target", "_hooks", "_patched")),
]


@dataclass(frozen=True)
class Finding:
    op: str  # the op the target serves ("plugin" for the machinery every op needs)
    target: str
    state: str  # ok | patch (a hook point our series adds) | missing | signature
    detail: str = ""  # the patch that adds it, or why the signature does not bind
    when: str = ""  # what it serves (the hook table's `when`)

    @property
    def blocking(self) -> bool:
        return self.state in ("missing", "signature")

    def line(self) -> str:
        what = {"missing": "missing", "signature": f"signature changed: {self.detail}"}.get(self.state, self.state)
        return f"{self.target}: {what} (disables {self.op}: {self.when})"


def versions() -> list[str]:
    """The supported SGLang versions: those with a patch series."""
    return patching.versions()


def release(version: str | None) -> str | None:
    """`0.5.17+cu130` -> `0.5.17` (local builds of a release count as the release)."""
    return version.split("+")[0] if version else None


def check(root: Path | None, ops: set[str] | None = None) -> list[Finding]:
    """Every hook target (of `ops`, default all) and the plugin machinery, against the source under `root`
    (the `sglang` package folder; None: the installed one). A target missing there but added by a shipped
    patch is `patch`."""
    from speedrun.overlays import hooks

    series = [p for v in versions() for p in patching.load_series(v)]
    out = [Finding("plugin", t, "ok" if find(t, root) else "missing", when="every op") for t in PLUGIN_API]
    for row in hooks():
        if ops is not None and row.op not in ops:
            continue
        f = Finding(row.op, row.target, "ok", when=row.when)
        if find(row.target, root) is None:
            via = patching.provided_by(row.target, series)
            out.append(Finding(row.op, row.target, "patch", via, row.when) if via else _with(f, "missing"))
            continue
        why = _binding(row, root)
        out.append(_with(f, "signature", why) if why else f)
    return out


def _binding(row, root: Path) -> str | None:
    """Why SGLang's function would not reach the hook as the hook expects; None when it binds."""
    from speedrun.overlays import resolve
    from speedrun.overlays.hooks import binding_problem, expected_signature

    try:
        expected = expected_signature(resolve(row.fn), row.kind)
    except Exception as exc:  # the hook module itself does not import here: that disables the op too
        return f"hook {row.fn} does not load: {type(exc).__name__}: {exc}"
    if expected is None:  # a registry hook: the target is a dict it fills, nothing is wrapped
        return None
    stock = signature(row.target, root)
    if stock is None:
        return f"the hook wraps a function, SGLang's {row.target.rsplit('.', 1)[-1]} is not one"
    return binding_problem(stock, expected)


def _with(f: Finding, state: str, detail: str = "") -> Finding:
    return Finding(f.op, f.target, state, detail, f.when)


def verdict(version: str | None, findings: list[Finding]) -> tuple[bool, str]:
    """(ok to serve, one line): in the matrix, or outside it with every target resolved, or what is missing."""
    known = ", ".join(versions())
    bad = [f for f in findings if f.blocking]
    listed = release(version) in versions()
    if listed and not bad:
        return True, f"sglang {version}: supported (matrix: {known})"
    if listed:
        head = f"sglang {version} is in the support matrix ({known}), but this source"
    else:
        head = f"sglang {version or '(unknown version)'} is not in the support matrix ({known})"
        if not bad:
            return True, f"{head}; every hook target resolves on its source"
        head += " and"
    ops = sorted({f.op for f in bad})
    return False, f"{head} lacks {len(bad)} hook target(s), disabling {', '.join(ops)}"


def stack_table() -> Table:
    """The installed versions of the serving stack beside STACK_PINS (yellow: a different one)."""
    from importlib.metadata import PackageNotFoundError, version

    from rich.table import Table

    t = Table(title="stack")
    for col in ("package", "installed", "pinned"):
        t.add_column(col)
    for pkg, pin in STACK_PINS.items():
        try:
            got = version(pkg)
        except PackageNotFoundError:
            got = "-"
        style = "green" if got.split("+")[0] == pin or pin == "-" else "yellow"
        t.add_row(pkg, f"[{style}]{got}[/]", pin)
    return t


def targets_table(root: Path, findings: list[Finding]) -> Table:
    """Every hook target of the sglang under `root` and whether it is there (or which patch adds it, or why its
    signature does not bind)."""
    from rich.table import Table

    t = Table(title=f"overlay hook targets in {root}", title_justify="left")
    t.add_column("op")
    t.add_column("target (under sglang.srt.)", overflow="fold")
    t.add_column("present", overflow="fold")
    shown = {"ok": "[green]yes[/]", "missing": "[red]no[/]"}
    for f in findings:
        state = shown.get(f.state) or (
            f"[yellow]after patch {f.detail.split('-')[0]}[/]" if f.state == "patch" else f"[red]{f.detail}[/]"
        )
        t.add_row(f.op, f.target.removeprefix("sglang.srt."), state)
    return t


def patch_states(version: str | None, root: Path) -> list[str]:
    """One line per patch of the version's series: its state on the sglang under `root`; or why there is none."""
    if release(version) not in versions():
        return [f"no patch series for sglang {version or '(unknown version)'}: `speedrun patch` refuses it"]
    try:
        states = patching.status(patching.load_series(release(version)), root.parent)
        return [f"patch {name}: {state}" for name, state in states.items()]
    except patching.PatchError as exc:
        return [f"patch series: {exc}"]
