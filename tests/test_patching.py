"""The patch series machinery, on the real sglang 0.5.17 source files (no GPU needed)."""

import difflib
import shutil

import pytest

from speedrun import patching
from speedrun.sglang_source import sglang_root

pytestmark = pytest.mark.skipif(sglang_root() is None, reason="sglang wheel not installed (scripts/test.sh does)")
REAL = "sglang/srt/plugins/__init__.py"
REAL2 = "sglang/srt/plugins/hook_registry.py"


def copy_real(tmp_path, rels):
    for rel in rels:
        dst = tmp_path / "site" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sglang_root().parent / rel, dst)
    return tmp_path / "site"


def make_patch(root, rel, old, new, why):
    text = (root / rel).read_text()
    assert old in text
    diff = difflib.unified_diff(
        text.splitlines(True), text.replace(old, new, 1).splitlines(True), f"a/{rel}", f"b/{rel}", n=3
    )
    return f"{why}\n\n" + "".join(diff)


@pytest.fixture
def series(tmp_path):
    root = copy_real(tmp_path, [REAL, REAL2])
    d = tmp_path / "patches" / "sglang-9.9"
    d.mkdir(parents=True)
    (d / "0001-a.patch").write_text(
        make_patch(root, REAL, "_plugins_loaded = False", "_plugins_loaded = False  # x", "Why: a test patch")
    )
    (d / "0002-b.patch").write_text(
        make_patch(root, REAL2, "class HookType(Enum):", "class HookType(Enum):  # y", "Why: another")
    )
    (d / "series").write_text("# order matters\n0001-a.patch\n0002-b.patch\n")
    return root, patching.load_series("9.9", tmp_path / "patches")


def test_apply_status_revert_round_trip(series):
    root, patches = series
    before = {p: (root / p).read_bytes() for p in (REAL, REAL2)}
    assert patches[0].header == "Why: a test patch"
    assert set(patching.status(patches, root).values()) == {"not applied"}
    assert patching.apply(patches, root, check=True) and (root / REAL).read_bytes() == before[REAL]  # check: no write
    changed = patching.apply(patches, root)
    assert sorted(changed) == sorted(root / p for p in (REAL, REAL2))
    assert "_plugins_loaded = False  # x" in (root / REAL).read_text()
    assert set(patching.status(patches, root).values()) == {"applied"}
    assert patching.apply(patches, root) == []  # idempotent
    patching.apply(patches, root, reverse=True)
    assert {p: (root / p).read_bytes() for p in (REAL, REAL2)} == before


def test_conflict_writes_nothing(series):
    root, patches = series
    text = (root / REAL2).read_text()
    (root / REAL2).write_text(text.replace("class HookType(Enum):", "class HookKind(Enum):"))
    before = (root / REAL).read_bytes()
    assert patching.status(patches, root)["0002-b.patch"].startswith("conflict")
    with pytest.raises(patching.PatchError, match="0002-b.patch.*hunk 1"):
        patching.apply(patches, root)
    assert (root / REAL).read_bytes() == before  # patch 1 was fine but nothing was written


def test_missing_target_file_is_named(series, tmp_path):
    _, patches = series
    with pytest.raises(patching.PatchError, match="does not exist .*--target"):
        patching.apply(patches, tmp_path / "empty")


def test_shipped_series_applies_and_reverts_on_the_real_source(tmp_path):
    patches = patching.load_series("0.5.17")
    assert patches, "the series ships at least one patch"
    rels = sorted({fp.path for p in patches for fp in p.files})
    root = copy_real(tmp_path, rels)
    before = {r: (root / r).read_bytes() for r in rels}
    for p in patches:
        assert p.header.lower().startswith("why"), f"{p.name}: the header must say why a hook cannot do it"
    assert set(patching.status(patches, root).values()) == {"not applied"}
    patching.apply(patches, root)
    assert set(patching.status(patches, root).values()) == {"applied"}
    assert any((root / r).read_bytes() != before[r] for r in rels)
    patching.apply(patches, root, reverse=True)
    assert {r: (root / r).read_bytes() for r in rels} == before


# ------------------------------------------------ issue 17 §3: version check, status exit, all-or-nothing writes
def speedrun_cli(*args, limit_bytes=None):
    """The real `speedrun` CLI in a subprocess; `limit_bytes` caps the size of any file it writes (RLIMIT_FSIZE:
    a write error that root meets too, unlike a read-only file)."""
    import os
    import resource
    import subprocess
    import sys

    def cap():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    code = "import sys; from speedrun.cli import main; sys.argv[0] = 'speedrun'; main()"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, preexec_fn=cap, timeout=120
    )


def sglang_tree(tmp_path, version, rels=("sglang/srt/speculative/draft_utils.py",)):
    """A folder holding sglang/ with real 0.5.17 files and a `_version.py` that says `version`."""
    root = copy_real(tmp_path, rels)
    (root / "sglang" / "_version.py").write_text(f"__version__ = version = '{version}'\n")
    return root


def test_patch_refuses_a_version_it_has_no_series_for(tmp_path):
    root = sglang_tree(tmp_path, "9.9.9")
    before = (root / "sglang/srt/speculative/draft_utils.py").read_bytes()
    r = speedrun_cli("patch", "apply", "--target", str(root))
    assert r.returncode == 1, r.stdout + r.stderr
    line = " ".join(r.stderr.split())
    assert "sglang 9.9.9 is not supported" in line and "0.5.17" in line and "Traceback" not in r.stderr
    assert (root / "sglang/srt/speculative/draft_utils.py").read_bytes() == before
    r = speedrun_cli("patch", "apply", "--target", str(sglang_tree(tmp_path / "b", "0.5.17")), "--version", "0.5.23")
    assert r.returncode == 1 and "is sglang 0.5.17" in " ".join(r.stderr.split())


def test_patch_picks_the_series_of_the_target_version(tmp_path):
    root = sglang_tree(tmp_path, "0.5.17")
    r = speedrun_cli("patch", "apply", "--target", str(root))
    assert r.returncode == 0, r.stderr
    assert "DRAFT_BACKEND_ALIASES" in (root / "sglang/srt/speculative/draft_utils.py").read_text()
    r = speedrun_cli("patch", "status", "--target", str(root))
    assert r.returncode == 0 and "0001-draft-backend-aliases.patch: applied" in r.stdout


def test_patch_status_exits_nonzero_on_a_conflict(tmp_path):
    root = sglang_tree(tmp_path, "0.5.17")
    f = root / "sglang/srt/speculative/draft_utils.py"
    f.write_text(f.read_text().replace("class DraftBackendFactory:", "class DraftFactory:"))
    r = speedrun_cli("patch", "status", "--target", str(root))
    assert "conflict" in r.stdout and r.returncode == 1, r.stdout + r.stderr


def test_a_write_error_half_way_leaves_every_file_as_it_was(series, tmp_path):
    """Patch 1's file is written, patch 2's is over the file-size cap: both files must end as they began."""
    import subprocess
    import sys

    root, _ = series
    before = {p: (root / p).read_bytes() for p in (REAL, REAL2)}
    assert len(before[REAL]) < 8192 < len(before[REAL2])
    code = (
        "import resource, sys; from pathlib import Path; from speedrun import patching\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
        "try:\n"
        "    patching.apply(patching.load_series('9.9', Path(sys.argv[1])), Path(sys.argv[2]))\n"
        "except patching.PatchError as exc:\n"
        "    print(exc); sys.exit(1)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "patches"), str(root)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and r.stdout.startswith(f"cannot write {root / REAL2}"), r.stdout + r.stderr
    assert "nothing was changed" in r.stdout
    assert {p: (root / p).read_bytes() for p in (REAL, REAL2)} == before
    assert not [f for f in root.rglob("*") if f.name.endswith(".speedrun-tmp")], "temp files left behind"


def test_an_unwritable_target_is_a_one_line_error(tmp_path):
    root = sglang_tree(tmp_path, "0.5.17")
    f = root / "sglang/srt/speculative/draft_utils.py"
    before = f.read_bytes()
    r = speedrun_cli("patch", "apply", "--target", str(root), limit_bytes=4096)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: cannot write") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f.read_bytes() == before


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes read-only files and folders")
def test_read_only_file_or_folder_is_refused_before_any_write(series):
    root, patches = series
    before = {p: (root / p).read_bytes() for p in (REAL, REAL2)}
    for path, mode in (((root / REAL2), 0o444), ((root / REAL2).parent, 0o555)):
        path.chmod(mode)
        try:
            with pytest.raises(patching.PatchError, match=f"cannot write .*{(root / REAL2).parent.name}"):
                patching.apply(patches, root)
        finally:
            path.chmod(0o755 if path.is_dir() else 0o644)
        assert {p: (root / p).read_bytes() for p in (REAL, REAL2)} == before


def test_a_failed_rename_puts_back_the_files_already_replaced(series, monkeypatch):
    """The rename step cannot be made to fail from outside (its temp files are written, the folder is
    writable): stand in for that one failure, the 2nd rename, and check the 1st file is put back."""
    import os

    root, patches = series
    before = {p: (root / p).read_bytes() for p in (REAL, REAL2)}
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(patching.os, "replace", replace)
    with pytest.raises(patching.PatchError, match=f"cannot write {root / REAL2}: No space.*nothing was changed"):
        patching.apply(patches, root)
    assert {p: (root / p).read_bytes() for p in (REAL, REAL2)} == before
    assert not [f for f in root.rglob("*") if f.name.endswith(".speedrun-tmp")]
