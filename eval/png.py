"""Plots saved as small PNGs: matplotlib's RGBA output quantized to a 64-colour palette. Line and bar charts use a
handful of colours, so nothing visible is lost while files shrink 3-4x; result folders are committed and travel to
the device machine inside its 64 MiB working tree.
`python -m speedrun.eval.png FILE...` shrinks existing PNGs in place (idempotent: a palette PNG is left as is)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from PIL import Image

COLOURS = 64


def _palette(im: Image.Image) -> Image.Image:
    return im.convert("RGB").quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT)


def save_png(fig: Any, path: Path | str, dpi: int = 120) -> Path:
    """fig.savefig(path) as a palette PNG; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    _palette(Image.open(buf)).save(path, optimize=True)
    return Path(path)


def shrink_png(path: Path | str) -> int:
    """Re-save one PNG with a palette unless it has one; the bytes saved."""
    path = Path(path)
    before = path.stat().st_size
    with Image.open(path) as im:
        if im.mode == "P":
            return 0
        small = _palette(im)
    small.save(path, optimize=True)
    return before - path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths or any(p.startswith("-") for p in paths):
        print("usage: python -m speedrun.eval.png FILE.png...", file=sys.stderr)
        return 2
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        print(f"{missing[0]}: no such file", file=sys.stderr)
        return 2
    saved = sum(shrink_png(p) for p in paths)
    print(f"{len(paths)} file(s), {saved / 1e6:.2f} MB saved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
