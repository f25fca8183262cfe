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
