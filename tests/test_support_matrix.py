"""The support matrix (issue 24): on every SGLang version we claim (one patch series each), checked on that
version's real source — every hook target resolves with the signature its hook expects, and the patch series
applies and reverts. scripts/test.sh unpacks the wheels (no GPU stack) under SPEEDRUN_SGLANG_SOURCES; under
CI a missing source fails instead of skipping. Plus the checker itself, on doctored copies of real files."""

import os
import shutil
from pathlib import Path

import pytest

import speedrun.overlays as plugin
from speedrun import patching, support
from speedrun.sglang_source import locate, sglang_root, source_version

SOURCES = Path(os.environ.get("SPEEDRUN_SGLANG_SOURCES", Path.home() / ".cache/speedrun/sglang-src"))


def source_of(version: str) -> Path:
    """The `sglang` package folder of `version`: the unpacked wheel, or the installed one if it is that version."""
    for root in (SOURCES / version / "sglang", sglang_root()):
        if root is not None and source_version(root) == version:
            return root
    if os.environ.get("CI"):
        pytest.fail(f"no sglang {version} source under {SOURCES}: scripts/test.sh downloads it")
    pytest.skip(f"no sglang {version} source under {SOURCES} (bash scripts/test.sh downloads it)")


@pytest.mark.parametrize("version", support.versions())
def test_every_hook_target_resolves_with_its_signature(version):
    findings = support.check(source_of(version))
    bad = [f.line() for f in findings if f.blocking]
    assert not bad, f"sglang {version}:\n" + "\n".join(bad)
    own = patching.load_series(version)
    for f in findings:  # a target our patches add must be added by this version's own series
        assert f.state == "ok" or patching.provided_by(f.target, own), f"{version}: {f.target} ({f.state})"


@pytest.mark.parametrize("version", support.versions())
def test_series_applies_and_reverts_on_the_real_source(version, tmp_path):
    src = source_of(version)
    series = patching.load_series(version)
    rels = sorted({fp.path for p in series for fp in p.files})
    for rel in [*rels, "sglang/_version.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.parent / rel, tmp_path / rel)
    before = {r: (tmp_path / r).read_bytes() for r in rels}
    for p in series:
        assert p.header.lower().startswith("why"), f"{p.name}: the header must say why a hook cannot do it"
    assert patching.target_version(tmp_path) == version
    assert set(patching.status(series, tmp_path).values()) == {"not applied"}
    patching.apply(series, tmp_path)
    assert set(patching.status(series, tmp_path).values()) == {"applied"}
    added = [f.target for f in support.check(src) if f.state == "patch"]
    assert all(locate(t, tmp_path / "sglang") for t in added), "after the series, its hook points exist"
    patching.apply(series, tmp_path, reverse=True)
    assert {r: (tmp_path / r).read_bytes() for r in rels} == before


# ---------------------------------------------------------------- the checker, on doctored copies of 0.5.17
needs_sglang = pytest.mark.skipif(sglang_root() is None, reason="sglang wheel not installed (scripts/test.sh does)")


def copy_of_targets(tmp_path: Path) -> Path:
    """The files every target lives in, copied from the installed sglang into tmp_path/sglang."""
    src = sglang_root()
    targets = [*support.PLUGIN_API, *(r.target for r in plugin.hooks())]
    for path in {hit[1] for t in targets if (hit := locate(t, src))}:
        dst = tmp_path / "sglang" / path.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dst)
    return tmp_path / "sglang"


def edit(root: Path, rel: str, old: str, new: str) -> None:
    f = root / rel
    text = f.read_text()
    assert old in text, f"{rel}: {old!r}"
    f.write_text(text.replace(old, new, 1))


MXFP4 = "srt/layers/quantization/mxfp4.py"


@needs_sglang
def test_a_copy_of_the_real_targets_passes(tmp_path):
    findings = support.check(copy_of_targets(tmp_path))
    assert not [f for f in findings if f.blocking]
    assert support.verdict("9.9.9", findings)[0]  # outside the matrix, but every target resolves


@needs_sglang
def test_a_missing_method_is_named_with_the_op_it_disables(tmp_path):
    root = copy_of_targets(tmp_path)
    edit(root, MXFP4, "    def apply(\n", "    def apply_moe(\n")
    bad = [f for f in support.check(root) if f.blocking]
    assert [(f.op, f.state) for f in bad] == [("mxfp4_moe", "missing")]
    assert bad[0].target.endswith("Mxfp4MoEMethod.apply") and "disables mxfp4_moe" in bad[0].line()
    ok, line = support.verdict("9.9.9", support.check(root))
    assert not ok and "9.9.9 is not in the support matrix" in line and "mxfp4_moe" in line
    assert support.verdict("0.5.17", [])[0]  # a matrix version is vouched for by CI (the plugin checks nothing)
    ok, line = support.verdict("0.5.17", support.check(root))  # ...but a broken copy of it is named (doctor)
    assert not ok and "0.5.17 is in the support matrix" in line and "but this source lacks 1" in line


@needs_sglang
def test_a_changed_signature_is_caught(tmp_path):
    """A parameter renamed, or a new required one, in a function a hook wraps: the hook no longer binds."""
    root = copy_of_targets(tmp_path)
    edit(root, MXFP4, "dispatch_output: StandardDispatchOutput,", "dispatch: StandardDispatchOutput,")
    (bad,) = [f for f in support.check(root) if f.blocking]
    assert bad.state == "signature" and "'dispatch'" in bad.detail and "'dispatch_output'" in bad.detail
    edit(root, "srt/model_loader/weight_utils.py", "    model: torch.nn.Module,\n    low", "    module, low")
    assert {f.op for f in support.check(root) if f.blocking} == {"mxfp4_moe", "synthetic"}
    assert not [f for f in support.check(root, {"mla_decode"}) if f.blocking]  # only the ops asked for


def test_binding_rules():
    """Named positional parameters must match in order; what stock has beyond them needs *args / **kwargs."""
    import inspect

    from speedrun.overlays.hooks import binding_problem, expected_signature

    def sig(f):
        return inspect.signature(f)

    def around(original, self, layer, x, bias=None): ...

    hook = expected_signature(around, "around")
    assert str(hook) == "(self, layer, x, bias=None)"
    assert binding_problem(sig(lambda self, layer, x, bias=None: 0), hook) is None
    assert binding_problem(sig(lambda self, layer, x: 0), hook) is None  # the hook's default covers it
    assert "more positional" in binding_problem(sig(lambda self, layer, x, bias=None, y=None: 0), hook)
    assert "keywords" in binding_problem(sig(lambda self, layer, x, *, y: 0), hook)
    assert "lacks" in binding_problem(sig(lambda self, layer: 0), hook)

    def after(result, model, *args, **kwargs): ...

    hook = expected_signature(after, "after")
    assert binding_problem(sig(lambda model, low=0, *, seed=1: 0), hook) is None
    assert "'module'" in binding_problem(sig(lambda module, low=0: 0), hook)
    assert expected_signature(after, "registry") is None


def test_the_resolver_follows_re_exports(tmp_path):
    """SGLang 0.5.23 moved server_args' choice lists to arg_groups/choices.py and re-exports them."""
    pkg = tmp_path / "sglang" / "srt"
    (pkg / "arg_groups").mkdir(parents=True)
    (pkg / "arg_groups" / "__init__.py").write_text("from .choices import CHOICES as ALIASED\n")
    (pkg / "arg_groups" / "choices.py").write_text("CHOICES = []\n\ndef add(x, *, y=1):\n    pass\n")
    (pkg / "server_args.py").write_text("from sglang.srt.arg_groups.choices import CHOICES, add  # noqa\n")
    root = tmp_path / "sglang"
    assert locate("sglang.srt.server_args.add", root)[1] == pkg / "arg_groups" / "choices.py"
    assert locate("sglang.srt.server_args.CHOICES", root) and locate("sglang.srt.arg_groups.ALIASED", root)
    assert not locate("sglang.srt.server_args.remove", root)
    from speedrun.sglang_source import signature

    assert str(signature("sglang.srt.server_args.add", root)) == "(x, *, y=...)"


@needs_sglang
def test_doctor_reports_the_version_against_the_matrix(tmp_path):
    from typer.testing import CliRunner

    from speedrun.cli import _register_commands, app

    _register_commands()
    root = copy_of_targets(tmp_path)
    (root / "_version.py").write_text("__version__ = version = '9.9.9'\n")
    r = CliRunner().invoke(app, ["doctor", "--sglang", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "9.9.9 is not in the support matrix" in r.output, r.output
    assert "every hook target resolves" in r.output and "no patch series for sglang 9.9.9" in r.output
    edit(root, MXFP4, "    def apply(\n", "    def apply_moe(\n")
    r = CliRunner().invoke(app, ["doctor", "--sglang", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "lacks 1 hook target(s), disabling mxfp4_moe" in r.output, r.output
    assert "Mxfp4MoEMethod.apply: missing (disables mxfp4_moe: standard" in r.output
    assert "the plugin refuses to load on it" in r.output
    r = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "0.5.17: supported (matrix: 0.5.17, " in r.output, r.output


# ---------------------------------------------------------------- the Triton side: compile report deltas
def test_compile_delta_reports_figures_and_fails_only_on_new_gate_failures(tmp_path):
    import json
    import subprocess
    import sys

    def report(name, **row):
        base = {"arch": "sm90", "kernel": "k", "op": "x", "pass": True, "problems": [], "fingerprint": "a"}
        rows = [{**base, "vgpr_total": 100, "spills": 0, "instructions": 900, **row}]
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return str(tmp_path / name)

    def delta(*args):
        cmd = [sys.executable, "-m", "speedrun.compile_delta", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    old = report("old.json")
    more_regs = report("regs.json", vgpr_total=120, fingerprint="b")
    r = delta(old, more_regs)
    assert r.returncode == 0 and "| sm90:k |  | 100 → 120 (+20) |" in r.stdout and "1 changed" in r.stdout, r.stdout
    spill = report("spill.json", spills=30, **{"pass": False}, problems=["spills to memory: 30 registers, 124 B"])
    r = delta(old, spill)
    assert r.returncode == 1 and "FAILS THE GATE: sm90:k: spills to memory" in r.stdout
    known = report("known.json", spills=16, **{"pass": False}, problems=["spills to memory: 16 registers, 68 B"])
    assert delta(old, spill, "--accept", known).returncode == 0  # the known spill, now of another size
    broken = report("broken.json", **{"pass": False}, problems=["CompilationError: at 1:0"])
    assert delta(old, broken, "--accept", known).returncode == 1  # a compile error is not the known spill
