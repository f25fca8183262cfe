"""`speedrun run --demo`: the whole pipeline — launch through the real launcher, throughput, agreement, compare,
report — with speedrun's fake SGLang server (eval/fakeserver.py) on both sides instead of SGLang.

It checks that the plumbing works on any machine, in seconds; it measures nothing. Every output says so: the recipe
name and description in each results file and the report's title, `summary.json`'s `pipeline_check`, the console.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from speedrun.eval.fakeserver import VOCAB
from speedrun.eval.results import write_json_atomic
from speedrun.launch.command import LaunchSpec, build
from speedrun.recipe import Agreement, Model, Recipe, Scenario, Side

LABEL = "PIPELINE CHECK against a fake server, not a measurement"
SCENARIO = Scenario(isl=128, osl=16, concurrency=[1, 4], prompts_per_concurrency=2, warmup_per_concurrency=1)
NOTES = [
    "pipeline check: both sides are speedrun's fake SGLang server (eval/fakeserver.py), not SGLang: no measurement",
    "pipeline check: scenarios replaced by ISL 128 / OSL 16 at concurrency 1, 4; GSM8K left out (no model to ask)",
]


def demo_recipe(recipe: Recipe, folder: Path) -> Recipe:
    """`recipe` as the pipeline check runs it: a stand-in model folder (a vocabulary for the prompts), small
    scenarios, agreement samples (a small set when the recipe has none), no GSM8K."""
    model_dir = folder / "fake-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"vocab_size": VOCAB, "note": LABEL}))
    agreement = recipe.accuracy.agreement or Agreement(prompts=4, prompt_len=16, tokens=8)
    return recipe.model_copy(
        update={
            "name": f"PIPELINE CHECK (fake server) of {recipe.name}",
            "description": f"{LABEL}: both sides are speedrun's fake SGLang server on this machine, so the numbers "
            f"say the pipeline works and nothing about SGLang or the overlays. Recipe: {recipe.description}",
            "model": Model(path=str(model_dir)),
            "baseline_model": None,
            "benchmarks": recipe.benchmarks.model_copy(update={"scenarios": [SCENARIO], "timeout_s": 60}),
            "accuracy": recipe.accuracy.model_copy(update={"gsm8k": None, "agreement": agreement}),
        }
    )


def fake_spec(recipe: Recipe, side: Side, port: int, report_dir: Path, model_path: str) -> LaunchSpec:
    """The side's real launch environment (overlays requested, report folder) around the fake server's argv."""
    env = build(recipe, side=side, port=port, model_path=model_path, report_dir=report_dir).env
    argv = [sys.executable, "-m", "speedrun.eval.fakeserver", "--port", str(port), "--ttft-ms", "5", "--tpot-ms", "1"]
    return LaunchSpec(argv, env, side)


def label_outputs(out: Path) -> None:
    """Every JSON of the run says what it is in its first key (summary.json carries no recipe name)."""
    for name in ("summary", "baseline", "control", "overlay"):
        path = out / f"{name}.json"
        if path.is_file():
            write_json_atomic(path, {"pipeline_check": LABEL, **json.loads(path.read_text())})
