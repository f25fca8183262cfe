"""The command-line flags `sglang.launch_server` accepts, read from SGLang's `srt/server_args.py` as text (no import:
no GPU stack needed), and a check of a command line against them.

SGLang 0.5.17 declares most flags as `ServerArgs` fields annotated `A[type, "help" | Arg(...), NS(...)]`: the flag
is `--field-name` (or `Arg(cli_name=...)`) plus `Arg(aliases=[...])`, choices from a `Literal[...]` type or
`Arg(choices=LIST)`; a field without help text or with `Arg(no_cli=True)` has no flag. A few more are added by
hand with `parser.add_argument("--...")`; those count too (their choices are not read).
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path

from speedrun.sglang_source import locate, sglang_root

# values our plugin adds to SGLang's choice lists at load time (overlays/mla_decode/hook.py)
PLUGIN_CHOICES = {"--attention-backend": {"speedrun_mla"}, "--decode-attention-backend": {"speedrun_mla"},
                  "--prefill-attention-backend": {"speedrun_mla"}}  # fmt: skip


@dataclass(frozen=True)
class Flag:
    name: str
    choices: frozenset[str] | None  # None: any value (or not read)
    switch: bool  # a bool field: takes no value


def _literal(node: ast.AST) -> list[str] | None:
    """The values of `Literal[...]` (or `Optional[Literal[...]]`), else None."""
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        if node.value.id == "Literal":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return [str(e.value) for e in elts if isinstance(e, ast.Constant)]
        if node.value.id == "Optional":
            return _literal(node.slice)
    return None


def _module_lists(module: ast.Module) -> dict[str, list[str]]:
    """Module-level `NAME = ["a", "b", ...]` lists (SGLang's *_CHOICES)."""
    out = {}
    for node in module.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            values = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = [str(v) for v in values]
    return out


def _field_flags(stmt: ast.AnnAssign, lists: dict[str, list[str]]) -> list[Flag]:
    ann = stmt.annotation
    if not (isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id in ("A", "Annotated")):
        return []
    parts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
    kind, meta = parts[0], parts[1:]
    arg = next((m for m in meta if isinstance(m, ast.Call) and getattr(m.func, "id", "") == "Arg"), None)
    has_help = any(isinstance(m, ast.Constant) and isinstance(m.value, str) for m in meta)
    if arg is None and not has_help:
        return []  # no CLI surface
    kw = {k.arg: k.value for k in arg.keywords} if arg is not None else {}
    if isinstance(kw.get("no_cli"), ast.Constant) and kw["no_cli"].value is True:
        return []
    name = "--" + stmt.target.id.replace("_", "-")
    if isinstance(kw.get("cli_name"), ast.Constant):
        name = kw["cli_name"].value
    names = [name] + [e.value for e in getattr(kw.get("aliases"), "elts", []) if isinstance(e, ast.Constant)]
    choices = _literal(kind)
    if isinstance(kw.get("choices"), ast.Name):
        choices = lists.get(kw["choices"].id)
    elif isinstance(kw.get("choices"), ast.List):
        choices = [str(e.value) for e in kw["choices"].elts if isinstance(e, ast.Constant)]
    switch = isinstance(kind, ast.Name) and kind.id == "bool"
    frozen = frozenset(choices) if choices is not None else None
    return [Flag(n, frozen, switch) for n in names]


def server_flags(root: Path | None = None) -> dict[str, Flag]:
    """Every flag of `sglang.launch_server` in the SGLang source under `root` (default: the installed one)."""
    root = root or sglang_root()
    hit = locate("sglang.srt.server_args.ServerArgs", root)
    if hit is None:
        raise FileNotFoundError(f"no sglang.srt.server_args.ServerArgs under {root}")
    cls, path = hit
    module = ast.parse(path.read_text(encoding="utf-8"))
    lists = _module_lists(module)
    flags: dict[str, Flag] = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            flags.update((f.name, f) for f in _field_flags(stmt, lists))
    for node in ast.walk(module):  # parser.add_argument("--x", ...) by hand
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for a in node.args:
                if isinstance(a, ast.Constant) and str(a.value).startswith("--"):
                    flags.setdefault(a.value, Flag(a.value, None, False))
    return flags


def check_command(line: str, flags: dict[str, Flag]) -> list[str]:
    """Problems of one `... -m sglang.launch_server ARGS` shell line: unknown flags, values outside the choices
    (plus what our plugin registers), a switch given a value."""
    argv = shlex.split(line)
    args = argv[argv.index("sglang.launch_server") + 1 :]
    problems = []
    for i, tok in enumerate(args):
        if not tok.startswith("--"):
            continue
        flag = flags.get(tok)
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        if flag is None:
            problems.append(f"{tok}: not a flag of sglang.launch_server")
        elif flag.switch and value is not None:
            problems.append(f"{tok} is a switch, given {value!r}")
        elif flag.choices is not None and value not in flag.choices | PLUGIN_CHOICES.get(tok, set()):
            problems.append(f"{tok} {value}: not one of {sorted(flag.choices)}")
    return problems
