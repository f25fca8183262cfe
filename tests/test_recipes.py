"""Recipe validation (good and bad files) and the exact launch commands of every shipped recipe."""

import shlex

import pytest
import yaml

from speedrun.launch.command import NO_MULTICAST, build
from speedrun.recipe import RecipeError, all_recipes, load_recipe

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


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_dry_run_commands(path, tmp_path):
    r = load_recipe(path)
    over = build(r, baseline=False, port=31000, report_dir=tmp_path)
    base = build(r, baseline=True, port=31001)
    for side in (over, base):
        assert side.argv[1:3] == ["-m", "sglang.launch_server"]
        assert side.env.items() >= NO_MULTICAST.items()
        assert shlex.split(side.shell())[-len(side.argv) :] == side.argv  # the printed line is the command
    ops = r.overlays.enabled_ops()
    assert over.env["SPEEDRUN_OVERLAYS"] == ",".join(ops)
    assert base.env["SPEEDRUN_OVERLAYS"] == ""
    for op in ops:
        assert over.env[f"SPEEDRUN_{op.upper()}_BACKEND"] == getattr(r.overlays, op).backend
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
        assert over.env["SPEEDRUN_SYNTHETIC_FILL"] == base.env["SPEEDRUN_SYNTHETIC_FILL"] == "1"


def test_finals_recipe_flags():
    r = load_recipe("deepseek-r1-mxfp4-mi355x")
    argv = build(r, baseline=True, port=30000).argv
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
    mtp = build(load_recipe("deepseek-r1-mxfp4-mtp-mi355x"), baseline=False, port=1).argv
    assert mtp[mtp.index("--speculative-algorithm") + 1] == "EAGLE"


def test_baseline_model_for_quark_on_cuda():
    r = load_recipe("synth-deepseek-mxfp4-h100")
    assert r.model_for(baseline=True).synthetic.quantization == "fp8_block"
    assert r.model_for(baseline=False).synthetic.quantization == "quark_mxfp4"
    assert r.model_for(True).synthetic.overrides == r.model_for(False).synthetic.overrides
