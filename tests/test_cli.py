"""The `speedrun` CLI: clear errors with a non-zero exit, dry-run output, doctor."""

import shlex
import socket

import yaml
from typer.testing import CliRunner

from speedrun.cli import _register_commands, app
from speedrun.overlays.environ import SETTINGS, PluginSettings

_register_commands()
runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_dry_run_prints_one_copy_pasteable_command():
    r = run("launch", "synth-gpt-oss-h100", "--dry-run", "--port", "31234")
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.output.splitlines() if "sglang.launch_server" in ln][0]
    assert "--port 31234" in line and "--load-format dummy" in line
    env = dict(w.split("=", 1) for w in shlex.split(line) if w.startswith("SPEEDRUN_"))
    assert list(env) == [SETTINGS]  # the plugin's settings in one variable, no loose ones
    settings = PluginSettings.from_env(env)
    assert settings.ops == ("mxfp4_moe",) and settings.synthetic_fill and settings.report_dir is not None


def test_bad_recipe_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "model": {"path": "m"},
                "hardware": {"platform": "cuda", "arch": "sm90"},
                "server": {"tp": "eight"},
            }
        )
    )
    r = run("launch", str(bad), "--dry-run")
    assert r.exit_code == 2
    assert "bad.yaml" in r.output and "server.tp: Input should be a valid integer" in r.output
    r = run("recipes", "validate", str(bad))
    assert r.exit_code == 1 and "server.tp" in r.output


def test_port_in_use_is_an_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("launch", "synth-deepseek-h100", "--port", str(port), "--timeout", "5", "--out", "/tmp/speedrun-cli")
    assert r.exit_code != 0
    assert "already in use" in r.output


def test_model_synth_needs_a_synthetic_recipe():
    r = run("model", "synth", "deepseek-r1-fp8-mi355x")
    assert r.exit_code == 2 and "model.synthetic is not set" in r.output


def test_patch_rejects_unknown_action_and_bad_target(tmp_path):
    assert run("patch", "frobnicate").exit_code == 2
    r = run("patch", "apply", "--target", str(tmp_path))
    assert r.exit_code == 1 and "does not exist" in r.output


def test_recipes_list_and_doctor():
    r = run("recipes", "list")
    assert r.exit_code == 0 and "8x gfx950" in r.output and "1x sm90" in r.output
    r = run("doctor")
    assert r.exit_code == 0 and "overlay hook targets" in r.output
