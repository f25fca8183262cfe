"""The patch series for a pinned SGLang: `patches/sglang-<version>/series` + numbered unified diffs.

Applied to the installed sglang (default) or a source tree, with the series of that tree's SGLang version
(its `sglang/_version.py`), strictly: every hunk must match its context exactly (no fuzz), all patches are
checked in memory before any file is written, files are replaced by rename and put back on a write error
(all-or-nothing), and revert is the reverse application. Paths in the diffs are `a/sglang/...` relative to the
folder holding the `sglang` package (site-packages, or `python/` of a checkout).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

PATCHES = Path(str(files("speedrun.patches")))  # patches/ is the package speedrun.patches (wheel or editable)
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(RuntimeError):
    pass


@dataclass
class Hunk:
    old_start: int
    lines: list[str] = field(default_factory=list)  # each starts with ' ', '-' or '+'

    def sides(self, reverse: bool) -> tuple[list[str], list[str]]:
        old = [ln[1:] for ln in self.lines if ln[0] in " -"]
        new = [ln[1:] for ln in self.lines if ln[0] in " +"]
        return (new, old) if reverse else (old, new)


@dataclass
class FilePatch:
    path: str
    hunks: list[Hunk]


@dataclass
class Patch:
    name: str
    header: str  # the "why" text above the first diff
    files: list[FilePatch]


def parse(text: str, name: str = "") -> Patch:
    files: list[FilePatch] = []
    header: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            path = lines[i + 1][4:].split("\t")[0].strip()
            files.append(FilePatch(path[2:] if path.startswith("b/") else path, []))
            i += 2
            continue
        m = HUNK.match(ln)
        if m and files:
            hunk = Hunk(int(m.group(1)))
            n_old, n_new = int(m.group(2) or 1), int(m.group(4) or 1)
            i += 1
            while (n_old > 0 or n_new > 0) and i < len(lines):
                body = lines[i] if lines[i] else " "
                if body.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                hunk.lines.append(body)
                n_old -= body[0] in " -"
                n_new -= body[0] in " +"
                i += 1
            files[-1].hunks.append(hunk)
            continue
        if not files:
            header.append(ln)
        i += 1
    if not files:
        raise PatchError(f"{name}: no unified diff found")
    return Patch(name, "\n".join(header).strip(), files)


def apply_text(text: str, fp: FilePatch, reverse: bool, where: str) -> str:
    """Apply one file's hunks to `text`, exactly; raises PatchError naming the hunk that does not match."""
    src = text.splitlines()
    out: list[str] = []
    pos = 0
    for n, hunk in enumerate(fp.hunks, 1):
        old, new = hunk.sides(reverse)
        at = _find(src, old, max(hunk.old_start - 1, 0), pos)
        if at is None:
            raise PatchError(f"{where}: hunk {n} (line {hunk.old_start}) does not match {fp.path}")
        out += src[pos:at] + new
        pos = at + len(old)
    out += src[pos:]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _find(src: list[str], block: list[str], hint: int, start: int) -> int | None:
    """Exact position of `block` in `src` at or after `start`, nearest to `hint`."""
    candidates = [i for i in range(start, len(src) - len(block) + 1) if src[i : i + len(block)] == block]
    return min(candidates, key=lambda i: abs(i - hint)) if candidates else None


def versions(base: Path = PATCHES) -> list[str]:
    """The SGLang versions with a patch series: the support matrix (each is checked in CI on its source)."""
    found = [d.name.removeprefix("sglang-") for d in base.iterdir() if d.name.startswith("sglang-")]
    return sorted((v for v in found if (base / f"sglang-{v}" / "series").is_file()), key=_version_key)


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.+]", version))


def series_dir(version: str, base: Path = PATCHES) -> Path:
    d = base / f"sglang-{version}"
    if not (d / "series").is_file():
        known = ", ".join(versions(base)) or "none"
        raise PatchError(f"sglang {version} is not supported: no patch series for it (supported: {known})")
    return d


def load_series(version: str, base: Path = PATCHES) -> list[Patch]:
    d = series_dir(version, base)
    names = [ln.strip() for ln in (d / "series").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [parse((d / n).read_text(), n) for n in names]


def target_version(root: Path, expected: str | None = None) -> str:
    """The SGLang version of the tree under `root` (the folder holding sglang/), from its `_version.py`;
    `expected` (--version) must agree with it, and stands in only where the tree does not say."""
    from speedrun.sglang_source import source_version

    found = source_version(root / "sglang")
    if found is None and expected is None:
        raise PatchError(
            f"{root / 'sglang' / '_version.py'} does not exist: cannot tell which SGLang version is there "
            "(is --target the folder holding sglang/? else pass --version)"
        )
    if found is not None and expected is not None and found.split("+")[0] != expected:
        raise PatchError(f"--version {expected}, but {root / 'sglang'} is sglang {found}")
    return (found or expected).split("+")[0]


def installed_root() -> Path:
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("sglang is not installed (pip install -e '.[serve]'), and no --target was given")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _plan(patches: list[Patch], root: Path, reverse: bool) -> dict[Path, str]:
    """New contents of every touched file after applying (or reverting) `patches` in order, in memory."""
    files: dict[Path, str] = {}
    for patch in reversed(patches) if reverse else patches:
        for fp in patch.files:
            path = root / fp.path
            if path not in files:
                if not path.exists():
                    raise PatchError(f"{patch.name}: {path} does not exist (is --target the folder holding sglang/?)")
                try:
                    files[path] = path.read_text(encoding="utf-8")
                except OSError as exc:
                    raise PatchError(f"{patch.name}: cannot read {path}: {exc.strerror}") from None
            files[path] = apply_text(files[path], fp, reverse, patch.name)
    return files


def status(patches: list[Patch], root: Path) -> dict[str, str]:
    """Per patch: 'applied', 'not applied' or 'conflict' (judged on its own against the current files)."""
    out = {}
    for p in patches:
        try:
            _plan([p], root, reverse=True)
            out[p.name] = "applied"
        except PatchError:
            try:
                _plan([p], root, reverse=False)
                out[p.name] = "not applied"
            except PatchError as exc:
                out[p.name] = f"conflict: {exc}"
    return out


def apply(patches: list[Patch], root: Path, *, reverse: bool = False, check: bool = False) -> list[Path]:
    """Apply (or revert) the whole series, or nothing. Patches already in the wanted state are skipped."""
    state = status(patches, root)
    done = "not applied" if reverse else "applied"
    todo = [p for p in patches if state[p.name] != done]
    bad = {n: s for n, s in state.items() if s.startswith("conflict")}
    if bad:
        raise PatchError("; ".join(f"{n}: {s}" for n, s in bad.items()))
    files = _plan(todo, root, reverse)
    if not check:
        write_all(files)
    return sorted(files)


def write_all(files: dict[Path, str]) -> None:
    """Write every file or none: each new text goes to a temp file beside its target, then all are renamed
    into place; a failure on the way puts back the files already replaced. Raises PatchError (one line)."""
    staged: dict[Path, Path] = {}
    originals: dict[Path, bytes] = {}
    replaced: list[Path] = []
    path = next(iter(files), None)  # the file being written, for the error
    try:
        for path, text in files.items():
            if not os.access(path, os.W_OK):  # a rename would replace it anyway: respect the permission
                raise PermissionError(errno.EACCES, "the file is read-only", str(path))
            originals[path] = path.read_bytes()
            staged[path] = _stage(path, text.encode())
        for path, tmp in staged.items():
            os.replace(tmp, path)
            replaced.append(path)
    except OSError as exc:
        lost = _restore({p: originals[p] for p in replaced})
        tail = f"; could not restore {', '.join(map(str, lost))}" if lost else "; nothing was changed"
        raise PatchError(f"cannot write {path}: {exc.strerror or exc}{tail}") from None
    finally:
        for path, tmp in staged.items():
            if path not in replaced:
                tmp.unlink(missing_ok=True)


def _stage(path: Path, data: bytes) -> Path:
    """`data` in a new temp file beside `path`, with `path`'s permission bits."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".speedrun-tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _restore(originals: dict[Path, bytes]) -> list[Path]:
    """Put original contents back (after a failed write); returns the files that could not be restored."""
    lost = []
    for path, data in originals.items():
        try:
            os.replace(_stage(path, data), path)
        except OSError:
            lost.append(path)
    return lost


def provided_by(target: str, patches: list[Patch]) -> str | None:
    """The patch of the series that defines `target` (a dotted sglang path), if any: a hook point we add."""
    module, _, attr = target.rpartition(".")
    path = module.replace(".", "/") + ".py"
    for p in patches:
        for fp in p.files:
            added = [ln[1:] for h in fp.hunks for ln in h.lines if ln.startswith("+")]
            if fp.path == path and any(ln.startswith((f"{attr} ", f"{attr}:", f"{attr}=")) for ln in added):
                return p.name
    return None
