"""`speedrun run` without a recipe: the README's main job for the GPUs this machine has.

The main job is DeepSeek-R1 MXFP4 with all three overlays against stock SGLang: the finals recipe on 8 MI355X,
and on one H100 or H200 the largest synthetic TP8 slice of it that card holds. Every candidate is matched against
the detected platform, arch and GPU count through its own `hardware:` section; the table below only ranks them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from speedrun.recipe import Recipe, load_recipe

MAIN_JOBS = (  # first wins a tie (same GPU-count fit, same card-name fit)
    "deepseek-r1-mxfp4-mi355x",  # the finals: 8x MI355X
    "synth-deepseek-mxfp4-l30-fp8kv-h100",  # 80 GB: 30 of the 61 layers beside the FP8 baseline, FP8 KV as the finals
    "synth-deepseek-mxfp4-l61-h200",  # 141 GB: all 61 layers
)
FINALS = MAIN_JOBS[0]


@dataclass(frozen=True)
class Machine:
    """The visible GPUs as torch reports them (no GPU: `gpus` 0 and `why_none`)."""

    gpus: int = 0
    platform: str = ""  # cuda | rocm
    arch: str = "cpu"  # sm90, gfx950, ...
    name: str = ""  # torch.cuda.get_device_name(0), e.g. "NVIDIA H100 80GB HBM3"
    why_none: str = ""

    def describe(self) -> str:
        return f"{self.gpus}x {self.name} ({self.platform} {self.arch})" if self.gpus else "no GPU"


def detect() -> Machine:
    """torch.cuda's view of this machine (ROCm through torch.version.hip and gcnArchName, via overlays.arch)."""
    try:
        import torch
    except ImportError:
        return Machine(why_none="torch is not installed")
    if not torch.cuda.is_available():
        return Machine(why_none="torch sees no CUDA or ROCm GPU")
    from speedrun.overlays.arch import current_arch

    platform = "rocm" if getattr(torch.version, "hip", None) else "cuda"
    return Machine(torch.cuda.device_count(), platform, current_arch(), torch.cuda.get_device_name(0))


class NoMainJob(ValueError):
    """No main-job recipe fits the detected hardware."""


def card(recipe_name: str) -> str:
    """The card a recipe is sized for, from its name's last part: `...-l30-h100` -> H100, `...-mi355x` -> MI355X."""
    return re.sub(r"x\d+$", "", recipe_name.rsplit("-", 1)[-1]).upper()


def hardware(r: Recipe) -> str:
    return f"{r.hardware.gpus}x {r.hardware.arch} ({r.hardware.platform})"


def choose(machine: Machine, recipes: list[Recipe] | None = None) -> tuple[Recipe, str]:
    """The main-job recipe for `machine` and one line saying why; NoMainJob when none fits.

    Fits: same platform and arch, no more GPUs than the machine has. Among those, the one for exactly this many
    GPUs, then the one sized for this card (its name), then the first in MAIN_JOBS (the smaller slice)."""
    recipes = recipes if recipes is not None else [load_recipe(n) for n in MAIN_JOBS]
    fits = [
        r
        for r in recipes
        if (r.hardware.platform, r.hardware.arch) == (machine.platform, machine.arch)
        and r.hardware.gpus <= machine.gpus
    ]
    if not fits:
        known = ", ".join(sorted({hardware(r) for r in recipes}))
        raise NoMainJob(
            f"no main-job recipe for {machine.describe()}: they need {known}; "
            "name a recipe (speedrun recipes list) or check the pipeline with --demo"
        )
    key = lambda r: (r.hardware.gpus == machine.gpus, card(r.name) in machine.name.upper())
    best = max(fits, key=key)  # max() keeps the first of equals: MAIN_JOBS order breaks ties
    exact, named = key(best)
    sized = (
        f"sized for the {card(best.name)}" if named else f"no main job names this card: the first for {machine.arch}"
    )
    why = [f"recipe hardware {hardware(best)}", sized]
    if not exact:
        why.append(f"uses {best.hardware.gpus} of the {machine.gpus} GPUs")
    return best, f"no recipe given: this machine has {machine.describe()} -> {best.name}: {', '.join(why)}"
