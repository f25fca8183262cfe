"""The package layout: every folder with an __init__.py is packaged, entry points are declared."""

import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAPPING = PYPROJECT["tool"]["setuptools"]["package-dir"]


def test_every_python_folder_is_a_listed_package():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    for pkg, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            assert name in listed, f"{init.parent} is not listed in pyproject.toml [tool.setuptools] packages"


def test_entry_points():
    project = PYPROJECT["project"]
    assert project["scripts"]["speedrun"] == "speedrun.cli:main"
    assert project["entry-points"]["sglang.srt.plugins"]["speedrun"] == "speedrun.overlays:register"
    assert any(d.startswith("sglang==0.5.17") for d in project["optional-dependencies"]["serve"])


# Data the code reads at run time: every file here must be package data, or a wheel ships without it.
RUNTIME_DATA = ("recipes/*.yaml", "patches/sglang-*/*", "speedrun/model_configs/*.json", "overlays/*/configs/*.json")


def test_the_data_the_code_reads_is_package_data():
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]
    for pattern in RUNTIME_DATA:
        files = sorted(ROOT.glob(pattern))
        assert files, pattern
        for f in files:
            pkg, folder = max(
                ((p, ROOT / d) for p, d in MAPPING.items() if f.is_relative_to(ROOT / d)), key=lambda t: len(t[1].parts)
            )
            rel = f.relative_to(folder).as_posix()
            assert any(fnmatch(rel, g) for g in globs.get(pkg, [])), f"{rel} of {pkg} is not package data"


def test_roofline_outside_the_repo_is_one_clear_error(tmp_path):
    """docs/ is not packaged: outside the repo `kernels roofline` says which file is missing and which flag to pass
    (it printed an empty table and exited 0)."""
    res = subprocess.run(
        [sys.executable, "-m", "speedrun.cli", "kernels", "roofline"], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "docs/results/kernels/round3/mla_decode.json" in res.stderr
    assert "--results" in res.stderr and "Traceback" not in res.stderr
