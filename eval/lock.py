"""The resolved baseline: which stock SGLang configuration `speedrun baseline` measured fastest for a recipe,
kept as a lock file (JSON, validated with pydantic) that `speedrun run` serves as its baseline.

The lock holds the winner's Server fields and environment on top of the recipe's, every candidate's probe numbers
(and why the others failed or were skipped), and a fingerprint of the recipe parts the search held fixed, so a
lock from another model, card or server setting is refused instead of silently applied.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from speedrun.overlays.mla_decode.sglang_hook import NAME as MLA_BACKEND
from speedrun.recipe import Recipe, merged_server

LOCK_FORMAT = "speedrun-baseline-lock/1"
LOCK_NAME = "baseline.lock.json"
OVERLAY_DECODE = MLA_BACKEND  # the overlay's decode backend


class LockError(ValueError):
    """A lock that cannot be used; the message is one line naming the file and why."""


class CandidateResult(BaseModel):
    """One stock configuration and what its probe measured."""

    model_config = ConfigDict(extra="forbid")

    label: str
    stage: Literal["recipe", "attention", "moe"]
    server: dict[str, Any] = Field(default_factory=dict, description="Server fields on top of the recipe's")
    env: dict[str, str] = Field(default_factory=dict)
    status: Literal["ok", "failed", "skipped", "same", "pending"]
    output_throughput: float | None = None
    total_throughput_per_gpu: float | None = None
    median_ttft_ms: float | None = None
    median_tpot_ms: float | None = None
    startup_s: float | None = None
    error: str = ""
    log_tail: str = ""
    log: str = ""  # the server log, relative to the search folder
    launch: str = ""

    def brief(self) -> CandidateResult:
        """Without the log tail (the lock stays small; the search report keeps the tails)."""
        return self.model_copy(update={"log_tail": ""})


class BaselineLock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["speedrun-baseline-lock/1"] = LOCK_FORMAT
    recipe: str
    fingerprint: str
    arch: str
    gpu: str | None = None  # the card the candidates were probed on (torch's device name); None in older locks
    sglang: str | None = None  # the version the candidates were served with
    created: str
    probe: dict[str, Any]
    best: CandidateResult
    candidates: list[CandidateResult]


def fingerprint(recipe: Recipe, concurrency: int | None) -> str:
    """What the search held fixed: model(s), card, environment and the server its probe ran on (`concurrency`: the
    probe's, with its server_by_concurrency setting folded in). Settings for other concurrencies (a c128 server
    with more CUDA graphs) leave the lock valid; it was probed at one concurrency either way."""
    fixed = recipe.at_concurrency(concurrency).model_dump(
        mode="json", include={"model", "baseline_model", "hardware", "server", "env", "server_by_concurrency"}
    )  # server_by_concurrency is [] here: a recipe without settings per concurrency keeps its fingerprint
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def beside(recipe_path: Path) -> Path:
    """Where a recipe's own lock lives: `recipes/NAME.baseline-lock.json`."""
    return recipe_path.with_name(f"{recipe_path.stem}.baseline-lock.json")


def find(explicit: Path | None, out: Path | None, recipe_path: Path | None) -> Path | None:
    """The lock to use: the one named, else the run folder's, else the recipe's own; None when there is none."""
    if explicit is not None:
        return explicit
    for cand in (out / LOCK_NAME if out else None, beside(recipe_path) if recipe_path else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def load(path: Path, recipe: Recipe) -> BaselineLock:
    try:
        lock = BaselineLock.model_validate_json(Path(path).read_text())
    except OSError as exc:
        raise LockError(f"{path}: cannot read the baseline lock ({exc.strerror or exc})") from None
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(map(str, e["loc"])) or "(top level)"
        raise LockError(f"{path}: not a baseline lock ({where}: {e['msg']})") from None
    if lock.recipe != recipe.name or lock.fingerprint != fingerprint(recipe, lock.probe.get("concurrency")):
        raise LockError(
            f"{path}: resolved for recipe {lock.recipe!r} as it was then, not for {recipe.name!r} as it is now "
            f"(model, card, env or the probe's server changed): run `speedrun baseline {recipe.name}` again"
        )
    return lock


def write(path: Path, lock: BaselineLock) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(lock.model_dump_json(indent=1) + "\n")
    os.replace(tmp, path)


def apply(recipe: Recipe, lock: BaselineLock) -> Recipe:
    """The recipe with the locked stock configuration as its baseline. Overlays replace decode only: where the
    overlay side names speedrun_mla as its (decode) attention backend, prefill stays on the locked stock backend
    (`--prefill-attention-backend BEST --decode-attention-backend speedrun_mla`, same page size)."""
    server = merged_server(recipe.server, lock.best.server, f"baseline lock {lock.best.label!r}")
    over = dict(recipe.overlays.server)
    stock = server.attention_backend
    wants_ours = OVERLAY_DECODE in (over.get("attention_backend"), over.get("decode_attention_backend"))
    if recipe.overlays.mla_decode.enabled and wants_ours and stock and stock != OVERLAY_DECODE:
        over |= {
            "attention_backend": stock,
            "prefill_attention_backend": stock,
            "decode_attention_backend": OVERLAY_DECODE,
        }
    overlays = recipe.overlays.model_copy(update={"server": over})
    return recipe.model_copy(update={"server": server, "env": recipe.env | lock.best.env, "overlays": overlays})


def describe(server: dict[str, Any]) -> str:
    """`attention_backend=flashmla, page_size=64` (the fields set), or what an empty override means."""
    return ", ".join(f"{k}={v}" for k, v in server.items() if v not in (None, False, [])) or "as the recipe sets it"


STOCK_FIELDS = ("attention_backend", "prefill_attention_backend", "decode_attention_backend", "page_size",
                "moe_runner_backend", "kv_cache_dtype")  # fmt: skip


def stock_fields(recipe: Recipe) -> dict[str, Any]:
    """The server fields that tell stock configurations apart (backends, page size, KV dtype), where set."""
    return {k: v for k in STOCK_FIELDS if (v := getattr(recipe.server, k)) is not None}


def config_info(recipe: Recipe, lock: BaselineLock | None, path: Path | None, gpu: str = "") -> dict[str, Any]:
    """What the baseline side served (`recipe`: with the lock applied) and why, recorded in its results; `gpu`:
    the card this run serves on (the report says when the lock was probed on another)."""
    if lock is None:
        return {"searched": False, "server": stock_fields(recipe), "run_gpu": gpu}
    return {
        "searched": True,
        "server": stock_fields(recipe),
        "lock": str(path),
        "probe": lock.probe,
        "created": lock.created,
        "lock_gpu": lock.gpu,
        "run_gpu": gpu,
        "best": lock.best.brief().model_dump(),
        "candidates": [c.brief().model_dump() for c in lock.candidates],
        "overlay_server": recipe.overlays.server,
    }


def probed_on(info: dict[str, Any]) -> str:
    """Where the lock's candidates were measured, as the report's sentence says it."""
    lock_gpu, run_gpu = info.get("lock_gpu"), info.get("run_gpu")
    if lock_gpu and lock_gpu == run_gpu:
        return f"on this card ({lock_gpu})"
    return f"on {lock_gpu}" if lock_gpu else "on a card the lock does not name"


def card_warning(info: dict[str, Any]) -> list[str]:
    """A line when this run's card is not (known to be) the one the lock was probed on: its strongest stock
    configuration was then not measured here, only assumed to carry over."""
    lock_gpu, run_gpu = info.get("lock_gpu"), info.get("run_gpu")
    if not run_gpu or lock_gpu == run_gpu:
        return []
    return [
        f"**Not re-probed on this run's card ({run_gpu})**: the stock candidates were measured on "
        f"{lock_gpu or 'another or unnamed card'}; run `speedrun baseline` here to lock this card's fastest.",
        "",
    ]


def report_lines(info: dict[str, Any] | None, rows: list) -> list[str]:
    """The report's "Baseline" section: which stock configuration the overlay is measured against, how it was
    chosen, and what the others measured."""
    if not info:
        return ["## Baseline", "", "Which stock configuration served the baseline was not recorded.", ""]
    if not info.get("searched"):
        return [
            "## Baseline",
            "",
            f"The baseline is the recipe's fixed stock configuration ({describe(info.get('server', {}))}), "
            "**not a searched one**: `speedrun baseline RECIPE` measures every stock configuration this card "
            "supports and locks the fastest.",
            "",
        ]
    best, probe = info["best"], info["probe"]
    won = [f"c{r.case['concurrency']} ({r.speedup:.2f}x)" for r in rows if r.speedup and r.speedup > 1]
    lost = [f"c{r.case['concurrency']} ({r.speedup:.2f}x)" for r in rows if r.speedup and r.speedup <= 1]
    out = [
        "## Baseline",
        "",
        f"Stock SGLang ran the fastest configuration {probed_on(info)}, **{best['label']}** "
        f"({describe(info['server'])}), resolved by `speedrun baseline` ({info['lock']}, {info['created']}; probe "
        f"ISL {probe['isl']} / OSL {probe['osl']} at concurrency {probe['concurrency']}, {probe['prompts']} prompts).",
        "",
        *card_warning(info),
        f"The overlay beat {best['label']} at: {', '.join(won) or 'none'}; not at: {', '.join(lost) or 'none'}.",
        f"Overlay side's server fields on top of it: {describe(info.get('overlay_server') or {})}.",
        "",
    ]
    body = []
    top = best.get("output_throughput") or 0
    for c in sorted(info["candidates"], key=lambda c: -(c.get("output_throughput") or -1)):
        tput = c.get("output_throughput")
        rel = f"{tput / top:.2f}x" if tput and top else "—"
        status = "**baseline**" if c["label"] == best["label"] else c["status"]
        why = c.get("error", "").splitlines()[0][:160] if c.get("error") else ""
        body.append([c["label"], describe(c["server"]), status, f"{tput:,.0f}" if tput else "—", rel, why])
    from speedrun.eval.report import table

    return out + table(["candidate", "server", "status", "output tok/s (probe)", "vs best", "note"], body) + [""]
