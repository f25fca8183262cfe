"""The plugin: register() against SGLang 0.5.17's real HookRegistry (loaded from the installed wheel's
source file, since the full sglang package needs a GPU stack to import), the report, the hook table."""

import importlib.util
import json
import sys

import pytest

import speedrun.overlays as plugin
from speedrun.overlays import Hook, environ, hooks, report
from speedrun.overlays.environ import SETTINGS, PluginSettings
from speedrun.overlays.hooks import Unsupported, around
from speedrun.overlays.ops import OPS
from speedrun.sglang_source import sglang_root

needs_sglang = pytest.mark.skipif(sglang_root() is None, reason="sglang wheel not installed (scripts/test.sh does)")


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """SGLang's own HookRegistry module, fresh per test, plus a clean plugin state and report dir."""
    path = sglang_root() / "srt" / "plugins" / "hook_registry.py"
    spec = importlib.util.spec_from_file_location("sglang.srt.plugins.hook_registry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "sglang.srt.plugins.hook_registry", mod)
    monkeypatch.setattr(plugin, "_registered", None)
    monkeypatch.setenv("SPEEDRUN_REPORT_DIR", str(tmp_path))
    monkeypatch.delenv("SPEEDRUN_SYNTHETIC_FILL", raising=False)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    yield mod.HookRegistry
    mod.HookRegistry.reset()


def read_report(tmp_path):
    (f,) = tmp_path.glob("overlay-*.json")
    return json.loads(f.read_text())


def ops_of(env):
    return list(PluginSettings.from_env(env).ops)


def test_loose_variables_of_a_hand_launch():
    assert ops_of({}) == []
    assert ops_of({"SPEEDRUN_OVERLAYS": "all"}) == list(OPS) == ["mla_decode", "mxfp4_moe", "mxfp4_gemm"]
    assert ops_of({"SPEEDRUN_OVERLAYS": " mxfp4_gemm ,mla_decode"}) == ["mxfp4_gemm", "mla_decode"]
    with pytest.raises(ValueError, match=r"^SPEEDRUN_OVERLAYS='mla': unknown op.*mla"):
        ops_of({"SPEEDRUN_OVERLAYS": "mla"})
    loose = {"SPEEDRUN_MXFP4_MOE_BACKEND": "Reference", "SPEEDRUN_SYNTHETIC_FILL": "1", "SPEEDRUN_SEED": "3"}
    s = PluginSettings.from_env(loose | {"SPEEDRUN_REPORT_DIR": "/r", "SPEEDRUN_MXFP4_MOE_LAYOUT": "plain"})
    assert s.backends == {"mla_decode": "triton", "mxfp4_moe": "reference", "mxfp4_gemm": "triton"}
    assert (s.synthetic_fill, s.seed, str(s.report_dir), s.mxfp4_moe_layout) == (True, 3, "/r", "plain")
    assert s.mla_decode_compute is None and s.mxfp4_gemm_aiter_kernel == "a4w4"  # unset: the defaults
    with pytest.raises(ValueError, match=r"^SPEEDRUN_MLA_DECODE_BACKEND='cuda': expected 'triton', 'aiter' or"):
        PluginSettings.from_env({"SPEEDRUN_MLA_DECODE_BACKEND": "cuda"})
    with pytest.raises(ValueError, match=r"^SPEEDRUN_SEED='x': .*valid integer"):
        PluginSettings.from_env({"SPEEDRUN_SEED": "x"})


def test_settings_travel_as_one_json_variable():
    s = PluginSettings(ops=("mxfp4_moe",), backends={"mxfp4_moe": "reference"}, seed=7, report_dir="/r")
    (name,) = s.env()
    assert name == SETTINGS and PluginSettings.from_env(s.env()) == s
    assert json.loads(s.env()[SETTINGS])["backends"]["mxfp4_moe"] == "reference"
    with pytest.raises(Exception, match="frozen"):
        s.seed = 1


@pytest.mark.parametrize(
    "text, error",
    [
        ('{"mla_decode_compute": "fp4"}', "SPEEDRUN_SETTINGS: mla_decode_compute: expected 'a8w8' or 'a16', got 'fp4'"),
        ('{"backends": {"mxfp4_moe": "cuda"}}', "SPEEDRUN_SETTINGS: backends.mxfp4_moe: expected 'triton', 'aiter' or"),
        ('{"ops": ["mla"]}', "SPEEDRUN_SETTINGS: ops.0: expected 'mla_decode', 'mxfp4_moe' or 'mxfp4_gemm', got 'mla'"),
        ('{"colour": "red"}', "SPEEDRUN_SETTINGS: colour: not a setting (known: ops, backends,"),
        ('{"seed": "x"}', "SPEEDRUN_SETTINGS: seed: Input should be a valid integer"),
        ("ops=all", "SPEEDRUN_SETTINGS: Invalid JSON"),
    ],
)
def test_a_bad_settings_value_is_one_line_naming_the_field(text, error):
    with pytest.raises(ValueError) as exc:
        PluginSettings.from_env({SETTINGS: text})
    assert str(exc.value).startswith(error) and "\n" not in str(exc.value)


def test_settings_and_a_loose_variable_together_are_an_error():
    """No silent precedence: the loose variable is named, whichever value it has."""
    both = PluginSettings(ops=("mla_decode",)).env() | {"SPEEDRUN_MLA_DECODE_BACKEND": "triton"}
    with pytest.raises(ValueError, match="^SPEEDRUN_MLA_DECODE_BACKEND is set as well as SPEEDRUN_SETTINGS: unset"):
        PluginSettings.from_env(both)
    assert PluginSettings.from_env(both | {"SPEEDRUN_MLA_DECODE_BACKEND": " "}).ops == ("mla_decode",)  # blank: unset


@needs_sglang
def test_register_is_a_noop_without_env(registry, monkeypatch, tmp_path):
    monkeypatch.delenv("SPEEDRUN_OVERLAYS", raising=False)
    assert plugin.register() == {"ops": [], "applied": [], "failed": []}
    assert not registry._hooks
    assert not list(tmp_path.glob("*.json"))


def _impl(original, x):
    if x < 0:
        raise Unsupported("negative input")
    return f"speedrun({x})"


@needs_sglang
def test_register_applies_counts_and_falls_back(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUN_OVERLAYS", "mla_decode")
    monkeypatch.setattr(plugin, "TABLE", [Hook("mla_decode", "plugin_target.compute", "test:impl", "around", "x >= 0")])
    monkeypatch.setattr(plugin, "resolve", lambda spec: around("mla_decode", _impl))
    import plugin_target

    out = plugin.register()
    assert out["applied"] == ["plugin_target.compute"] and not out["failed"]
    assert plugin.register() is out  # idempotent: no second wrapper
    assert plugin_target.compute(3) == "speedrun(3)"
    assert plugin_target.compute(-1) == "stock(-1)"
    report.flush(force=True)
    rep = read_report(tmp_path)
    assert rep["role"] == "launcher" and rep["ops_requested"] == ["mla_decode"]
    assert rep["settings"]["ops"] == ["mla_decode"]  # every setting, as loaded
    assert rep["settings"]["backends"]["mla_decode"] == "triton" and rep["settings"]["report_dir"] == str(tmp_path)
    assert rep["calls"] == {"mla_decode/_impl": 1}
    assert rep["fallbacks"] == {"mla_decode/_impl": {"negative input": 1}}
    assert rep["errors"] == []


@needs_sglang
def test_register_reads_the_launchers_settings_once(registry, monkeypatch, tmp_path):
    """SPEEDRUN_SETTINGS (what the launcher sets) turns the plugin on; a loose variable beside it stops
    register() with the variable's name."""
    monkeypatch.delenv("SPEEDRUN_REPORT_DIR")
    settings = PluginSettings(ops=("mla_decode",), backends={"mla_decode": "reference"}, report_dir=tmp_path)
    monkeypatch.setenv(SETTINGS, settings.env()[SETTINGS])
    monkeypatch.setenv("SPEEDRUN_SEED", "1")
    with pytest.raises(ValueError, match="SPEEDRUN_SEED is set as well as SPEEDRUN_SETTINGS"):
        plugin.register()
    monkeypatch.delenv("SPEEDRUN_SEED")
    monkeypatch.setattr(plugin, "TABLE", [Hook("mla_decode", "plugin_target.compute", "test:impl", "around", "x >= 0")])
    monkeypatch.setattr(plugin, "resolve", lambda spec: around("mla_decode", _impl))
    assert plugin.register()["applied"] == ["plugin_target.compute"]
    assert environ.settings() == settings
    rep = read_report(tmp_path)
    assert rep["backends"] == {"mla_decode": "reference"} and PluginSettings(**rep["settings"]) == settings


@needs_sglang
def test_requested_but_not_applied_is_an_error(registry, monkeypatch, tmp_path):
    """On a CPU machine the real targets cannot import (no CUDA stack): the report must say so."""
    monkeypatch.setenv("SPEEDRUN_OVERLAYS", "mxfp4_moe")
    target = "sglang.srt.layers.quantization.mxfp4.Mxfp4MoEMethod.apply"
    monkeypatch.setattr(plugin, "TABLE", [Hook("mxfp4_moe", target, "x:y", "around")])
    monkeypatch.setattr(plugin, "resolve", lambda spec: around("mxfp4_moe", _impl))
    out = plugin.register()
    assert out["failed"] == [target]
    assert any(target in e and "not applied: ModuleNotFoundError" in e for e in read_report(tmp_path)["errors"])


@needs_sglang
def test_unresolvable_hook_is_an_error(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUN_OVERLAYS", "mxfp4_gemm")
    monkeypatch.setattr(plugin, "TABLE", [Hook("mxfp4_gemm", "plugin_target.compute", "synthetic.hook:nope")])
    out = plugin.register()
    assert out["failed"] == ["plugin_target.compute"]
    assert "AttributeError" in read_report(tmp_path)["errors"][0]


def test_process_identity_reads_scheduler_frame():
    def run_scheduler_process(server_args, port_args, gpu_id, tp_rank, *rest):
        return report.process_identity()

    ident = run_scheduler_process(None, None, 3, 2)
    assert ident["role"] == "scheduler" and ident["tp_rank"] == 2 and ident["gpu_id"] == 3
    assert report.process_identity()["role"] == "launcher"


# Every hook target on every claimed SGLang version (module, class, attribute, signature): test_support_matrix.py


@needs_sglang
def test_an_unknown_version_that_lacks_a_target_is_refused_whole(registry, monkeypatch, tmp_path):
    """SGLang 9.9.9 (outside the matrix) whose source lacks a hook target: nothing is registered, stock runs,
    and the report says which target and what it disables, instead of a failure mid-load."""
    from test_support_matrix import MXFP4, copy_of_targets, edit

    root = copy_of_targets(tmp_path / "src")
    edit(root, MXFP4, "    def apply(\n", "    def apply_moe(\n")
    monkeypatch.setattr(plugin, "_sglang_version", lambda: "9.9.9")
    monkeypatch.setattr("speedrun.sglang_source.sglang_root", lambda: root)
    monkeypatch.setenv("SPEEDRUN_OVERLAYS", "mxfp4_moe,mxfp4_gemm")
    out = plugin.register()
    assert out["applied"] == [] and not registry._hooks and "9.9.9 is not in the support matrix" in out["refused"]
    rep = read_report(tmp_path)
    assert rep["errors"][0].endswith("plugin off, stock SGLang runs") and "disabling mxfp4_moe" in rep["errors"][0]
    assert any("Mxfp4MoEMethod.apply: missing (disables mxfp4_moe" in e for e in rep["errors"][1:])
    assert rep["applied"] == [] and rep["support"] in rep["errors"][0]


@needs_sglang
def test_an_unknown_version_with_every_target_goes_ahead(registry, monkeypatch, tmp_path):
    from test_support_matrix import copy_of_targets

    root = copy_of_targets(tmp_path / "src")
    monkeypatch.setattr(plugin, "_sglang_version", lambda: "9.9.9")
    monkeypatch.setattr("speedrun.sglang_source.sglang_root", lambda: root)
    monkeypatch.setenv("SPEEDRUN_OVERLAYS", "mxfp4_gemm")
    out = plugin.register()
    assert "refused" not in out and registry._hooks  # registered (applying needs the GPU stack: errors here)
    assert "every hook target resolves" in read_report(tmp_path)["support"]


@pytest.mark.parametrize("row", hooks(), ids=lambda r: r.fn)
def test_every_hook_function_resolves(row):
    fn = plugin.resolve(row.fn)
    assert callable(fn)
    assert row.kind in ("around", "after", "before", "replace", "registry")


def test_aiter_backend_is_a_clear_error_off_rocm(monkeypatch):
    """`backend: aiter` on CUDA (or CPU) stops with the variable's name for every op, before any kernel runs."""
    import torch

    from speedrun.overlays.hooks import require_aiter

    if getattr(torch.version, "hip", None):
        pytest.skip("ROCm build")
    for op in OPS:
        with pytest.raises(RuntimeError, match=f"{op}: backend aiter needs ROCm"):
            require_aiter(op)
    monkeypatch.setattr(torch.version, "hip", "6.4")  # a ROCm build whose Python has no aiter
    with pytest.raises(RuntimeError, match="aiter is not importable"):
        require_aiter("mxfp4_moe")


def test_moe_aiter_backend_checks_before_falling_back(monkeypatch):
    from speedrun.overlays import environ
    from speedrun.overlays.mxfp4_moe import sglang_hook as hook

    monkeypatch.setenv("SPEEDRUN_MXFP4_MOE_BACKEND", "aiter")
    environ.load()  # as register() does
    with pytest.raises(RuntimeError, match="needs ROCm"):
        hook._check_serving(object())


def test_environment_registry_is_read_once_at_registration(monkeypatch):
    """Every loose variable sets one settings field (the field holds its type, default and doc); every field has
    one; hooks see the settings loaded by register(), not the environment of the moment."""
    from speedrun.overlays import environ

    assert {"SPEEDRUN_OVERLAYS", "SPEEDRUN_MLA_DECODE_COMPUTE", "SPEEDRUN_MXFP4_MOE_LAYOUT"} <= set(environ.VARS)
    assert {f"SPEEDRUN_{op.upper()}_BACKEND" for op in OPS} <= set(environ.VARS)
    assert {v.field for v in environ.VARS.values()} == set(PluginSettings.model_fields)
    assert all(doc for _, _, doc in environ.table())
    assert ("SPEEDRUN_MXFP4_GEMM_AITER_KERNEL", "'a4w4'", "aiter GEMM kernel (ROCm)") in environ.table()
    monkeypatch.setenv("SPEEDRUN_MXFP4_MOE_BACKEND", "reference")
    loaded = environ.load()
    assert loaded.backends["mxfp4_moe"] == "reference"
    monkeypatch.setenv("SPEEDRUN_MXFP4_MOE_BACKEND", "aiter")  # after registration: not seen
    assert environ.settings().backends["mxfp4_moe"] == "reference"
    monkeypatch.setenv("SPEEDRUN_MXFP4_MOE_LAYOUT", "tiled")
    with pytest.raises(ValueError, match="SPEEDRUN_MXFP4_MOE_LAYOUT='tiled': expected 'swz', 'swzg16', 'swzg64' or"):
        environ.load()
    monkeypatch.delenv("SPEEDRUN_MXFP4_MOE_LAYOUT")
    monkeypatch.delenv("SPEEDRUN_MXFP4_MOE_BACKEND")
    environ.load()
