"""GSM8K, the finals' accuracy gate: k-shot, greedy, exact match on the final number.

Prompt format and stop strings are SGLang's `few_shot_gsm8k` ("Question: ...\\nAnswer: ..." blocks); the
shots come from train.jsonl (the first k) so no test question is its own example (SGLang takes them from the
test set; use a train-less folder to get that behaviour). Two extractions are scored:
flexible = the last number in the completion (SGLang's rule, the gate), strict = the `#### N` form.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speedrun.eval.bench import progress_bar
from speedrun.eval.client import post_all
from speedrun.recipe import Gsm8k

STOP = ["Question", "Assistant:", "<|separator|>"]
SOURCE = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
STRICT = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
REQUEST_TIMEOUT_S = 600.0  # one answer of <= max_tokens; far above a healthy server under load


def data_dir(cfg: Gsm8k | None = None, download: bool = True) -> Path:
    """recipe `data`, else $SPEEDRUN_GSM8K_DIR, else <repo>/../shared/data/gsm8k, else a user cache (filled from
    the canonical source only when no local copy exists). Never inside the repo."""
    cands = [cfg.data if cfg else None, os.environ.get("SPEEDRUN_GSM8K_DIR"), REPO.parent / "shared/data/gsm8k"]
    for c in cands:
        if c and (Path(c) / "test.jsonl").is_file():
            return Path(c)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "speedrun" / "gsm8k"
    if (cache / "test.jsonl").is_file() or not download:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("test.jsonl", "train.jsonl"):
        try:
            urllib.request.urlretrieve(f"{SOURCE}/{name}", cache / f".{name}.tmp")
            os.replace(cache / f".{name}.tmp", cache / name)
        except OSError as exc:
            raise FileNotFoundError(
                f"no local GSM8K (tried {[str(c) for c in cands if c]}) and download failed: {exc}"
            ) from None
    return cache


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def normalize(num: str) -> str:
    """'1,000' -> '1000', '18.00' -> '18', '-3.50' -> '-3.5': equal values compare equal as strings."""
    s = num.replace(",", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v == int(v) else repr(v)


def extract_flexible(text: str) -> str | None:
    nums = NUMBER.findall(text)
    return normalize(nums[-1]) if nums else None


def extract_strict(text: str) -> str | None:
    m = STRICT.search(text)
    return normalize(m.group(1)) if m else None


def label(answer: str) -> str:
    """The reference number: what follows '####' in the data set's answer."""
    value = extract_strict(answer)
    if value is None:
        raise ValueError(f"GSM8K answer without '#### N': {answer[-80:]!r}")
    return value


def example(row: dict[str, str], with_answer: bool) -> str:
    return f"Question: {row['question']}\nAnswer:" + (f" {row['answer']}" if with_answer else "")


def few_shot_prefix(shots: list[dict[str, str]]) -> str:
    return "".join(example(r, True) + "\n\n" for r in shots)


def build_prompts(folder: Path, shots: int, questions: int | None) -> tuple[list[str], list[str]]:
    """(prompts, labels) for the first `questions` test questions."""
    test = read_jsonl(folder / "test.jsonl")
    train = folder / "train.jsonl"
    pool = read_jsonl(train) if train.is_file() else test
    prefix = few_shot_prefix(pool[:shots])
    rows = test[:questions] if questions else test
    return [prefix + example(r, False) for r in rows], [label(r["answer"]) for r in rows]


async def _complete(
    url: str, prompts: list[str], cfg: Gsm8k, timeout_s: float, on_done: Callable[[int, dict], None]
) -> list[dict[str, Any]]:
    params = {"temperature": 0.0, "max_new_tokens": cfg.max_tokens, "stop": STOP}
    bodies = [{"text": p, "sampling_params": params} for p in prompts]
    outs = await post_all(url, bodies, cfg.concurrency, what="GSM8K", timeout_s=timeout_s, on_done=on_done)
    return [{"text": o["text"], "tokens": (o.get("meta_info") or {}).get("completion_tokens", 0)} for o in outs]


def answer_text(url: str, out: dict[str, Any]) -> str:
    """The completion of one answer; an answer without it is a broken server, not a wrong answer."""
    if not isinstance(out.get("text"), str):
        raise ValueError(f"{url} answered without a 'text' string: {str(out)[:200]}")
    return out["text"]


def score(outputs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    flex = [extract_flexible(o["text"]) for o in outputs]
    strict = [extract_strict(o["text"]) for o in outputs]
    n = max(len(labels), 1)
    return {
        "questions": len(labels),
        "score_flexible": sum(f == y for f, y in zip(flex, labels, strict=False)) / n,
        "score_strict": sum(s == y for s, y in zip(strict, labels, strict=False)) / n,
        "invalid": sum(f is None for f in flex) / n,
        "errors": sum(1 for o in outputs if o.get("error")),
    }


def run(
    url: str,
    cfg: Gsm8k,
    out_jsonl: Path | None = None,
    questions: int | None = None,
    *,
    show_progress: bool = False,
    label: str = "",
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> dict[str, Any]:
    """Evaluate the server at `url`; the gate is `score_flexible >= cfg.min_score`. A request that fails (no
    connection, an HTTP error, a timeout, a malformed answer) raises MeasurementFailed: there is no score."""
    folder = data_dir(cfg)
    prompts, labels = build_prompts(folder, cfg.shots, questions or cfg.questions)
    t0 = time.perf_counter()
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"{label} GSM8K".strip(), total=len(prompts))
        right = answered = 0  # the running score

        def done(i: int, out: dict[str, Any]) -> None:
            nonlocal right, answered
            right += extract_flexible(answer_text(url, out)) == labels[i]
            answered += 1
            desc = f"{label} GSM8K {right}/{answered} right ({right / answered:.3f})".strip()
            bar.update(task, advance=1, description=desc)

        outputs = asyncio.run(_complete(url, prompts, cfg, timeout_s, done))
    result = score(outputs, labels) | {
        "duration_s": time.perf_counter() - t0,
        "shots": cfg.shots,
        "min_score": cfg.min_score,
        "data": str(folder),
        "output_tokens": sum(o["tokens"] or 0 for o in outputs),
    }
    result["passed"] = result["score_flexible"] >= cfg.min_score
    if out_jsonl is not None:
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"label": y, "pred": extract_flexible(o["text"]), **o} for o, y in zip(outputs, labels, strict=False)]
        out_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return result
