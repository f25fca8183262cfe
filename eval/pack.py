"""Result data committed gzip-compressed. Everything tracked travels to the device machine with every call, inside a
64 MiB working tree beside the ~55 MiB SGLang bundle, and result JSON and logs shrink 5-6x in gzip: so the data files
under docs/results over MIN_BYTES are stored as `NAME.gz` (baseline locks stay plain: `speedrun run` reads them).

Readers take either form: `read_json("x.json")` reads x.json, or x.json.gz where only that exists, or a path that
names the .gz itself. `python -m speedrun.eval.pack PATH...` packs the data files under PATH in place (the same bytes
every time: no name or time in the gzip header) and points the repo's Markdown at the new names."""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".json", ".txt", ".log", ".tail", ".csv")
MIN_BYTES = 8192  # smaller files (overlay reports, summaries) stay plain: readable in place, little to save
KEEP_PLAIN = ("*.lock.json",)  # `speedrun run --baseline-lock` reads them
_SUFFIX = "|".join(map(re.escape, DATA_SUFFIXES))
_WRITES = re.compile(r"(?:>|\btee(?: -a)?)\s*\Z")  # what precedes a file a command writes: `> x.json`, `tee x.log`
# a path-like token ending in a data suffix, not already followed by .gz (nor part of a longer name)
_TOKEN = re.compile(rf"(?<![\w./-])((?:\.{{1,2}}/)?[\w.-]+(?:/[\w.-]+)*(?:{_SUFFIX}))(?![\w.])")


def _gz(path: Path) -> Path:
    return path.with_name(path.name + ".gz")


def resolve(path: Path | str) -> Path:
    """`path`, or its packed twin `path.gz` where only that exists (the path itself when neither does)."""
    path = Path(path)
    return _gz(path) if not path.exists() and path.suffix != ".gz" and _gz(path).exists() else path


def read_text(path: Path | str) -> str:
    """The text of a data file, plain or packed (OSError when neither exists, naming the plain path)."""
    path = resolve(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text()


def read_json(path: Path | str) -> Any:
    """json.loads of read_text: ValueError when it is not JSON."""
    return json.loads(read_text(path))


def data_files(folder: Path, pattern: str) -> list[Path]:
    """The files of `folder` matching `pattern` (e.g. "overlay-*.json"), plain or packed, sorted by plain name."""
    found = {f.name.removesuffix(".gz"): f for f in folder.glob(pattern + "*") if f.is_file()}
    return [found[n] for n in sorted(found) if fnmatch.fnmatch(n, pattern)]


def packable(path: Path) -> bool:
    """Whether `path` is result data that is committed packed (a data suffix, not kept plain, MIN_BYTES or more)."""
    return (
        path.suffix in DATA_SUFFIXES
        and not any(fnmatch.fnmatch(path.name, k) for k in KEEP_PLAIN)
        and path.stat().st_size >= MIN_BYTES
    )


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: no file name, time 0, level 9."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def pack_file(path: Path) -> int:
    """Replace `path` by `path.gz` (written whole, then renamed: an interrupted pack leaves the plain file); the bytes
    saved."""
    data = path.read_bytes()
    packed = gzip_bytes(data)
    tmp = path.with_name(f".{path.name}.gz.tmp")
    tmp.write_bytes(packed)
    os.replace(tmp, _gz(path))
    path.unlink()
    return len(data) - len(packed)


def to_pack(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out += [f for f in files if packable(f)]
    return out


def repoint(text: str, bases: Iterable[Path]) -> str:
    """`text` with every path token that names a packed file (resolved against each of `bases` in turn) renamed to
    the .gz it now is."""
    bases = list(bases)

    def fix(m: re.Match[str]) -> str:
        tok = m.group(1)
        if _WRITES.search(text[max(0, m.start() - 12) : m.start()]):  # a command writes the plain file
            return tok
        for base in bases:
            p = base / tok
            if p.exists():
                return tok
            if _gz(p).exists():
                return tok + ".gz"
        return tok

    return _TOKEN.sub(fix, text)


def markdown_files(path: Path) -> tuple[Path, list[Path]]:
    """The Markdown that may name files under `path`, and the root its repo-relative names start from: the tracked
    Markdown of the git checkout holding `path`, or every *.md under `path` outside one."""
    folder = path if path.is_dir() else path.parent
    git = ["git", "-C", str(folder)]
    try:
        root = Path(subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, check=True,
                                   text=True).stdout.strip())  # fmt: skip
        out = subprocess.run([*git, "-C", str(root), "ls-files", "-z", "*.md"], capture_output=True, check=True)
        return root, [root / p for p in out.stdout.decode().split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return folder, sorted(folder.rglob("*.md"))


def repoint_markdown(path: Path) -> list[Path]:
    """Rewrite the Markdown (markdown_files) whose references a pack under `path` renamed; the files changed."""
    root, mds = markdown_files(path)
    changed = []
    for md in mds:
        text = md.read_text()
        new = repoint(text, (md.parent, root))
        if new != text:
            md.write_text(new)
            changed.append(md)
    return changed


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths or any(p.startswith("-") for p in paths):
        print("usage: python -m speedrun.eval.pack PATH... (result folders or files: their data files over "
              f"{MIN_BYTES} B become NAME.gz)", file=sys.stderr)  # fmt: skip
        return 2
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        print(f"{missing[0]}: no such file or folder", file=sys.stderr)
        return 2
    files = to_pack(Path(p) for p in paths)
    saved = sum(pack_file(f) for f in files)
    mds = {md for p in paths for md in repoint_markdown(Path(p).resolve())}
    print(f"{len(files)} file(s) packed, {saved / 2**20:.2f} MiB saved; {len(mds)} Markdown file(s) repointed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
