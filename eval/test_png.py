"""Plots are saved as palette PNGs (eval/png.py): smaller than matplotlib's RGBA, the same picture."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from speedrun.eval.png import main, save_png, shrink_png


def _figure():
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, colour in enumerate(("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")):
        ax.plot(range(20), [x * (i + 1) for x in range(20)], marker="o", color=colour, label=f"impl {i}")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def test_save_png_is_a_smaller_palette_png_of_the_same_picture(tmp_path: Path) -> None:
    fig = _figure()
    rgba, small = tmp_path / "rgba.png", tmp_path / "small.png"
    fig.savefig(rgba, dpi=120)
    save_png(fig, small)
    plt.close(fig)
    with Image.open(small) as s, Image.open(rgba) as r:
        assert s.mode == "P" and s.size == r.size
        diff = np.abs(np.asarray(s.convert("RGB"), dtype=int) - np.asarray(r.convert("RGB"), dtype=int))
    assert small.stat().st_size < 0.6 * rgba.stat().st_size
    assert diff.mean() < 2.0 and (diff.max(axis=-1) > 48).mean() < 0.01  # a few anti-aliased edge pixels at most


def test_shrink_in_place_is_idempotent(tmp_path: Path, capsys) -> None:
    fig = _figure()
    path = tmp_path / "plot.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    assert shrink_png(path) > 0
    assert shrink_png(path) == 0  # already a palette PNG
    assert main([str(path)]) == 0 and "1 file(s)" in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys) -> None:
    for args in ([], ["--help"], [str(tmp_path / "missing.png")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, args
