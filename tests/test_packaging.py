"""The package layout: every folder with an __init__.py is packaged, entry points are declared."""

import tomllib
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
