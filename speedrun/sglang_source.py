"""Questions about SGLang answered from its source files, without importing it (no GPU, no deps):
does a dotted hook target exist, what is its signature, and which version a source tree is."""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
from pathlib import Path

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Assign | ast.AnnAssign


def sglang_root() -> Path | None:
    """The installed `sglang` package folder (None when sglang is not installed)."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _tree(path: Path) -> ast.Module:
    st = path.stat()
    return _parse(path, st.st_mtime_ns, st.st_size)  # a file changed since (patched, edited) is parsed again


@functools.cache
def _parse(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _module_file(root: Path, dotted: str) -> Path | None:
    rel = Path(*dotted.split(".")[1:])  # drop the leading "sglang"
    for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _defines(body: list[ast.stmt], name: str) -> ast.AST | None:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
    return None


def _reexport(body: list[ast.stmt], name: str, module: str, package: bool) -> str | None:
    """`from sglang.x import name` (or a relative import) at module level -> "sglang.x.name"."""
    for node in body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) != name:
                continue
            if node.level:  # relative to the package `module` is in (or is, for an __init__.py)
                pkg = module.split(".") if package else module.split(".")[:-1]
                base = pkg[: len(pkg) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] == "sglang":
                return f"{source}.{alias.name}"
    return None


def locate(target: str, root: Path | None = None, _depth: int = 0) -> tuple[Definition, Path] | None:
    """The definition of `sglang.pkg.module.Attr[.method]` in the source under `root` (installed sglang) and
    the file it is in, following module-level `from sglang... import` re-exports; None when it is not there."""
    root = root or sglang_root()
    if root is None or _depth > 8:
        return None
    parts = target.split(".")
    for split in range(len(parts) - 1, 1, -1):  # longest module prefix that is a file
        module = ".".join(parts[:split])
        path = _module_file(root, module)
        if path is None:
            continue
        node: ast.AST | None = _tree(path)
        for i, name in enumerate(parts[split:]):
            body = getattr(node, "body", None)
            found = _defines(body, name) if body is not None else None
            if found is None and i == 0:
                source = _reexport(body, name, module, package=path.name == "__init__.py")
                rest = parts[split + 1 :]
                return locate(".".join([source, *rest]), root, _depth + 1) if source else None
            node = found
            if node is None:
                return None
        return node, path
    return None


def find(target: str, root: Path | None = None) -> Definition | None:
    """The definition of a dotted target in the source under `root` (see `locate`), or None."""
    hit = locate(target, root)
    return hit[0] if hit else None


def target_exists(target: str, root: Path | None = None) -> bool:
    """True when `sglang.pkg.module.Attr[.method]` is defined in the source under `root` (installed sglang)."""
    return find(target, root) is not None


class _Default:
    """A default value the source has (shown as `...`: only its presence matters here)."""

    def __repr__(self) -> str:
        return "..."


def signature(target: str, root: Path | None = None) -> inspect.Signature | None:
    """The parameters of the function `target` names, from its source (defaults shown as `...`); None when
    the target is not a function."""
    node = find(target, root)
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    a = node.args
    P = inspect.Parameter
    some = _Default()
    positional = [*a.posonlyargs, *a.args]
    defaults = [P.empty] * (len(positional) - len(a.defaults)) + [some] * len(a.defaults)
    params = [
        P(arg.arg, P.POSITIONAL_ONLY if i < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD, default=d)
        for i, (arg, d) in enumerate(zip(positional, defaults, strict=True))
    ]
    if a.vararg:
        params.append(P(a.vararg.arg, P.VAR_POSITIONAL))
    params += [
        P(k.arg, P.KEYWORD_ONLY, default=P.empty if d is None else some)
        for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    if a.kwarg:
        params.append(P(a.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


def source_version(root: Path) -> str | None:
    """The version a `sglang` package folder declares in its generated `_version.py` (wheels and builds)."""
    path = root / "_version.py"
    if not path.exists():
        return None
    for node in _tree(path).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
                return str(node.value.value)
    return None
