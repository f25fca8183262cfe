"""Questions about SGLang answered from its source files, without importing it (no GPU, no deps):
does a dotted hook target exist, and which version is installed."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


def sglang_root() -> Path | None:
    """The installed `sglang` package folder (None when sglang is not installed)."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


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


def target_exists(target: str, root: Path | None = None) -> bool:
    """True when `sglang.pkg.module.Attr[.method]` is defined in the source under `root` (installed sglang)."""
    root = root or sglang_root()
    if root is None:
        return False
    parts = target.split(".")
    for split in range(len(parts) - 1, 1, -1):  # longest module prefix that is a file
        path = _module_file(root, ".".join(parts[:split]))
        if path is None:
            continue
        node: ast.AST | None = _tree(path)
        for name in parts[split:]:
            body = getattr(node, "body", None)
            node = _defines(body, name) if body is not None else None
            if node is None:
                return False
        return True
    return False
