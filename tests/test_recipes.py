"""Recipe validation (good and bad files) and the exact launch commands of every shipped recipe."""

import os
import shlex
import subprocess
import sys

import pytest
import yaml

from speedrun.launch.command import NO_MULTICAST, build, settings_for
from speedrun.overlays import environ
from speedrun.overlays.environ import SETTINGS, PluginSettings
from speedrun.recipe import RecipeError, Side, all_recipes, load_recipe

RECIPES = all_recipes()
MINIMAL = {"name": "t", "model": {"path": "m"}, "hardware": {"platform": "cuda", "arch": "sm90", "gpus": 1}}


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_ships_the_finals_and_synthetic_recipes():
    names = {p.stem for p in RECIPES}
    assert {
        "deepseek-r1-mxfp4-mi355x",
        "deepseek-r1-mxfp4-mtp-mi355x",
        "deepseek-r1-fp8-mi355x",
        "gpt-oss-120b-mi355x",
        "synth-deepseek-h100",
        "synth-deepseek-mxfp4-h100",
        "synth-gpt-oss-h100",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_is_valid(path):
    r = load_recipe(path)
    assert r.name == path.stem, "a recipe's name is its file name"


BAD = {  # id: (recipe fields on top of MINIMAL, what the error must say)
    "arch": (
        {"hardware": {"platform": "cuda", "arch": "sm100", "gpus": 1}},
        "hardware.arch: Input should be 'sm90' or 'gfx950' (got 'sm100')",
    ),
    "type": ({"server": {"tp": "eight"}}, "server.tp: Input should be a valid integer"),
    "extra": ({"server": {"tensor_parallel": 8}}, "server.tensor_parallel: Extra inputs are not permitted"),
    "tp>gpus": ({"server": {"tp": 8}}, "(top level): Value error, server.tp x server.dp = 8 GPUs > hardware.gpus = 1"),
    "backend": (
        {"overlays": {"mla_decode": {"backend": "cuda"}}},
        "overlays.mla_decode.backend: Input should be 'triton', 'aiter' or 'reference'",
    ),
    "overlay-server": ({"overlays": {"server": {"attn": "x"}}}, "overlays.server has unknown server field(s) ['attn']"),
    "scenario": (
        {"benchmarks": {"scenarios": [{"isl": 1024, "concurrency": [4]}]}},
        "benchmarks.scenarios.0.osl: Field required",
    ),
    "gsm8k": (
        {"accuracy": {"gsm8k": {"min_score": 1.5}}},
        "accuracy.gsm8k.min_score: Input should be less than or equal to 1",
    ),
    "synthetic": (
        {"model": {"path": "m", "synthetic": {"arch": "deepseek_v3"}}},
        "model.synthetic needs server.load_format: dummy",
    ),
    "concurrency-0": (
        {"benchmarks": {"scenarios": [{"isl": 1, "osl": 1, "concurrency": [4, 0]}]}},
        "benchmarks.scenarios.0.concurrency.1: Input should be greater than 0 (got 0)",
    ),
    "concurrency<0": (
        {"benchmarks": {"scenarios": [{"isl": 1, "osl": 1, "concurrency": [-4]}]}},
        "benchmarks.scenarios.0.concurrency.0: Input should be greater than 0 (got -4)",
    ),
    "request_rate<0": (
        {"benchmarks": {"scenarios": [{"isl": 1, "osl": 1, "concurrency": [4], "request_rate": -1}]}},
        "benchmarks.scenarios.0.request_rate: Input should be greater than 0 (got -1)",
    ),
    "tp-divides-gpus": (
        {"hardware": {"platform": "cuda", "arch": "sm90", "gpus": 8}, "server": {"tp": 3}},
        "server.tp = 3 does not divide hardware.gpus = 8",
    ),
    "tp-bool": ({"server": {"tp": True}}, "server.tp: Input should be a valid integer (got True)"),
    "gpus-bool": (
        {"hardware": {"platform": "cuda", "arch": "sm90", "gpus": True}},
        "hardware.gpus: Input should be a valid integer (got True)",
    ),
    "isl-float": (
        {"benchmarks": {"scenarios": [{"isl": 2.0, "osl": 1, "concurrency": [4]}]}},
        "benchmarks.scenarios.0.isl: Input should be a valid integer (got 2.0)",
    ),
}


@pytest.mark.parametrize(("patch", "expected"), BAD.values(), ids=BAD.keys())
def test_bad_recipe_error_names_file_and_field(tmp_path, patch, expected):
    path = write(tmp_path, {**MINIMAL, **patch})
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)), msg
    assert expected in msg, msg


def test_missing_fields_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml: 3 error\(s\)(.|\n)*  hardware: Field required"):
        load_recipe(write(tmp_path, {"description": "x"}))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RecipeError, match="no such recipe file .*known recipes: .*synth-deepseek-h100"):
        load_recipe("no-such-recipe")


def test_duplicate_key_names_the_key_and_its_lines(tmp_path):
    """yaml.safe_load keeps the last of two equal keys without a word; a recipe must not."""
    text = "name: t\nmodel: {path: m}\nhardware: {platform: cuda, arch: sm90, gpus: 1}\nserver:\n  tp: 1\n  tp: 2\n"
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert str(exc.value) == f"{path}: line 6: duplicate key 'tp' (first on line 5)"
    path = write(tmp_path, "name: t\nname: u\n")
    with pytest.raises(RecipeError, match=r"r.yaml: line 2: duplicate key 'name' \(first on line 1\)"):
        load_recipe(path)


def test_off_is_a_word_and_only_true_false_are_booleans(tmp_path):
    """YAML 1.1 would read `off` as False (failing `stock_fp8: off` as "got False"); recipes read booleans as YAML
    1.2 does, so `yes` in a boolean field is a one-line error naming the field."""
    text = "name: t\nmodel: {path: m}\nhardware: {platform: cuda, arch: sm90, gpus: 1}\n"
    text += "overlays:\n  mla_decode: {enabled: false}\n  mxfp4_gemm: {stock_fp8: off, enabled: True}\n"
    r = load_recipe(write(tmp_path, text))
    assert r.overlays.mxfp4_gemm.stock_fp8 == "off" and r.overlays.mxfp4_gemm.enabled is True
    assert r.overlays.mla_decode.enabled is False
    path = write(tmp_path, text + "server: {disable_radix_cache: yes}\n")
    with pytest.raises(RecipeError, match=r"server.disable_radix_cache: Input should be a valid boolean \(got 'yes'\)"):
        load_recipe(path)


def test_merge_key_override_is_not_a_duplicate(tmp_path):
    """A key next to a `<<` merge overrides the merged one (YAML's rule), and aliases are fine."""
    text = "name: t\nmodel: {path: m}\nhardware: {platform: cuda, arch: sm90, gpus: 1}\n"
    text += "env: &e {<<: {A: '1', B: '2'}, A: '3'}\nbaseline_model: {path: m}\n"
    assert load_recipe(write(tmp_path, text)).env == {"A": "3", "B": "2"}


def test_directory_or_binary_file_is_one_line_error(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path)
    assert str(exc.value) == f"{tmp_path}: is a directory, expected a recipe YAML file"
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert str(exc.value) == f"{path}: not UTF-8 text (byte 6), expected a recipe YAML file"


def test_validate_checks_every_file_and_reports_each(tmp_path):
    """One bad file (of any kind) does not stop the others from being checked; exit 1 when any failed."""
    good = write(tmp_path, MINIMAL, "good.yaml")
    dup = write(tmp_path, "name: t\nname: u\n", "dup.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe")
    folder = tmp_path / "folder"
    folder.mkdir()
    argv = [sys.executable, "-m", "speedrun.cli", "recipes", "validate", str(folder), str(binary), str(dup), str(good)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=os.environ | {"COLUMNS": "300"})
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res.stderr
    assert f"ok {good}" in res.stdout
    for bad in (folder, binary, dup):
        assert str(bad) in res.stderr, res.stderr
    assert "3 of 4 recipe file(s) failed" in res.stderr


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_dry_run_commands(path, tmp_path):
    r = load_recipe(path)
    over = build(r, side=Side.OVERLAY, port=31000, report_dir=tmp_path)
    base = build(r, side=Side.BASELINE, port=31001)
    for side in (over, base):
        assert side.argv[1:3] == ["-m", "sglang.launch_server"]
        assert side.env.items() >= NO_MULTICAST.items()
        assert shlex.split(side.shell())[-len(side.argv) :] == side.argv  # the printed line is the command
        assert [k for k in side.env if k.startswith("SPEEDRUN_")] == [SETTINGS]  # one variable, no loose ones
    ops = r.overlays.enabled_ops()
    o, b = PluginSettings.from_env(over.env), PluginSettings.from_env(base.env)
    assert list(o.ops) == ops and b.ops == () and o.report_dir == tmp_path and b.report_dir is None
    for op in ops:
        assert o.backends[op] == getattr(r.overlays, op).backend
    if r.server.tp > 1:
        assert over.argv[over.argv.index("--tp-size") + 1] == str(r.server.tp)
    for field, value in r.overlays.server.items():
        if field == "extra_args":
            assert over.argv[-len(value) :] == value
            continue
        flag = "--" + field.replace("_", "-")
        assert over.argv[over.argv.index(flag) + 1] == str(value)
        assert flag not in base.argv or base.argv[base.argv.index(flag) + 1] != str(value)
    if r.model.synthetic:
        assert o.synthetic_fill and b.synthetic_fill and o.seed == b.seed == r.model.synthetic.seed
        assert "SGLANG_PLUGINS" not in base.env  # the stock side loads the plugin for the filler only
    else:
        assert base.env["SGLANG_PLUGINS"] == "none" and not b.synthetic_fill


def test_recipe_to_env_to_plugin_settings_round_trip(tmp_path, monkeypatch):
    """What the launcher builds from a recipe is what the plugin loads in the server process, field by field."""
    r = load_recipe("synth-deepseek-mxfp4-h100")
    data = r.model_dump(exclude_unset=True)
    data["overlays"]["mla_decode"].update(compute="a16", kv_store="stock")
    data["overlays"]["mxfp4_moe"] = {"backend": "reference", "layout": "plain", "stock_fp8": "resident"}
    data["overlays"]["mxfp4_gemm"] = {"aiter_kernel": "afp4wfp4", "stock_fp8": "resident"}
    r = load_recipe(write(tmp_path, data))
    spec = build(r, side=Side.OVERLAY, port=1, report_dir=tmp_path / "rep")
    for k, v in spec.env.items():
        monkeypatch.setenv(k, v)
    for name in environ.VARS:
        monkeypatch.delenv(name, raising=False)
    loaded = environ.load()
    assert loaded == settings_for(r, Side.OVERLAY, tmp_path / "rep")
    assert loaded.ops == ("mla_decode", "mxfp4_moe", "mxfp4_gemm") and loaded.backends["mxfp4_moe"] == "reference"
    assert (loaded.mla_decode_compute, loaded.mxfp4_moe_layout, loaded.mxfp4_gemm_aiter_kernel) == (
        "a16",
        "plain",
        "afp4wfp4",
    )
    assert (loaded.synthetic_fill, loaded.seed, loaded.report_dir) == (True, 0, tmp_path / "rep")
    assert loaded.mxfp4_moe_stock_fp8 == loaded.mxfp4_gemm_stock_fp8 == "resident"
    assert loaded.mla_decode_kv_store == "stock"
    base = settings_for(r, Side.BASELINE)
    assert base.ops == () and base.mla_decode_compute is None and base.mxfp4_moe_layout is None
    assert base.mla_decode_kv_store == "fused"
    assert base.mxfp4_moe_stock_fp8 == base.mxfp4_gemm_stock_fp8 == "per_call"


def test_a_plugin_variable_in_a_recipe_env_is_refused(tmp_path):
    """The recipe's fields carry the plugin settings; a loose variable in `env` would make the plugin refuse."""
    for env in ({"SPEEDRUN_MXFP4_MOE_LAYOUT": "plain"}, {SETTINGS: "{}"}):
        with pytest.raises(RecipeError, match=f"{next(iter(env))} is a plugin setting"):
            load_recipe(write(tmp_path, MINIMAL | {"env": env}))
    load_recipe(write(tmp_path, MINIMAL | {"env": {"SPEEDRUN_GSM8K_DIR": "/d", "SGLANG_USE_AITER": "1"}}))


def test_one_side_type_and_the_control_is_stock():
    """Side is the one spelling: its values are the results files' and folders' names; the control is stock SGLang
    (no overlays, our plugin not loaded), like the baseline."""
    r = load_recipe("synth-deepseek-h100")
    assert [str(s) for s in Side] == ["baseline", "control", "overlay"] and f"{Side.CONTROL}.json" == "control.json"
    assert Side.BASELINE.stock and Side.CONTROL.stock and not Side.OVERLAY.stock
    ctl = build(r, side="control", port=1)  # a label read from a results file works as well
    assert ctl.side is Side.CONTROL and PluginSettings.from_env(ctl.env).ops == ()
    with pytest.raises(ValueError, match="'stock' is not a valid Side"):
        build(r, side="stock", port=1)


@pytest.mark.parametrize("side", list(Side), ids=str)
def test_launch_and_run_build_a_server_the_same_way(side, tmp_path):
    """`speedrun launch` and `speedrun run` share one pipeline (eval.serve: model_path, then default_spec)."""
    from speedrun.eval.serve import default_spec, launch_spec, model_path

    r = load_recipe("synth-deepseek-h100")
    spec, run_dir = launch_spec(r, side, port=31000, host="127.0.0.1", out=tmp_path, generate=False)
    model = model_path(r, side, generate=False)
    same = default_spec(r, side, 31000, run_dir / "reports", model)
    assert (spec.argv, spec.env, spec.side) == (same.argv, same.env, side)
    assert run_dir.name.startswith(f"{r.name}-{side}-") and model in spec.argv


def test_finals_recipe_flags():
    r = load_recipe("deepseek-r1-mxfp4-mi355x")
    argv = build(r, side=Side.BASELINE, port=30000).argv
    joined = " ".join(argv)
    for part in (
        "--tp-size 8",
        "--kv-cache-dtype fp8_e4m3",
        "--attention-backend aiter",
        "--chunked-prefill-size 196608",
        "--cuda-graph-max-bs 128",
        "--mem-fraction-static 0.8",
        "--disable-radix-cache",
    ):
        assert part in joined
    assert r.env["SGLANG_USE_AITER"] == "1"
    sc = r.benchmarks.scenarios[0]
    assert (sc.isl, sc.osl, sc.concurrency, sc.prompts_per_concurrency) == (8192, 1024, [4, 32, 128], 10)
    mtp = build(load_recipe("deepseek-r1-mxfp4-mtp-mi355x"), side=Side.OVERLAY, port=1).argv
    assert mtp[mtp.index("--speculative-algorithm") + 1] == "EAGLE"


def test_baseline_model_for_quark_on_cuda():
    r = load_recipe("synth-deepseek-mxfp4-h100")
    assert r.model_for(baseline=True).synthetic.quantization == "fp8_block"
    assert r.model_for(baseline=False).synthetic.quantization == "quark_mxfp4"
    assert r.model_for(True).synthetic.overrides == r.model_for(False).synthetic.overrides
