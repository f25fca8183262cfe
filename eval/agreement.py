"""Agreement between two servers, for synthetic weights where GSM8K means nothing: the same seeded random
prompts, greedy decoding, token logprobs (+ the top-k at every step); compare greedy tokens up to each
prompt's first divergence and the logprobs on that matched prefix (after a divergence the contexts differ, so
nothing later is comparable).

Random-weight models have nearly flat next-token distributions, so two correct implementations that round
differently flip the argmax wherever the top two are close. Two things separate that from a bug:
- each divergence's *margin*: how far, in the reference side's own logprobs, the token the other side chose
  was below its own choice (a near tie, <= `tie_margin`, is rounding; a token far below, or outside the
  top-k, is not);
- a *control*: a second stock configuration (another attention or MoE backend) compared with the baseline in
  the same way measures how much stock SGLang disagrees with itself on this model (`calibrated` gate).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from speedrun.eval.bench import progress_bar
from speedrun.eval.client import GenRequest, payload, post_all
from speedrun.eval.prompts import TokenPool, random_prompts
from speedrun.recipe import Agreement

SEED = 20240607
REQUEST_TIMEOUT_S = 600.0  # one answer of `tokens` greedy tokens; far above a healthy server


def prompts(pool: TokenPool, cfg: Agreement, seed: int = SEED) -> list[GenRequest]:
    rows = random_prompts(pool, cfg.prompts, cfg.prompt_len, cfg.tokens, 1.0, seed)
    return [GenRequest(ids, n) for ids, n in rows]


def parse_logprobs(out: dict[str, Any]) -> tuple[list[int], list[float], list[dict[int, float]]]:
    """SGLang's `meta_info.output_token_logprobs`: [[logprob, token_id, text|None], ...] and
    `output_top_logprobs`: per step a list of the same triples (absent unless `top_logprobs_num` was asked)."""
    meta = out.get("meta_info") or {}
    rows = meta.get("output_token_logprobs") or []
    tops = [{int(t[1]): float(t[0]) for t in (step or [])} for step in meta.get("output_top_logprobs") or []]
    return [int(r[1]) for r in rows], [float(r[0]) for r in rows], tops


def sample(url: str, out: dict[str, Any]) -> dict[str, Any]:
    """One prompt's sample; an answer without token logprobs is a broken server, not a disagreement."""
    try:
        ids, lps, tops = parse_logprobs(out)
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"{url} answered malformed logprobs ({type(exc).__name__}: {exc})") from None
    if not ids:
        raise ValueError(f"{url} answered no output_token_logprobs: {str(out)[:200]}")
    return {"ids": ids, "logprobs": lps, "top": [[[t, lp] for t, lp in d.items()] for d in tops]}


def collect(
    url: str,
    pool: TokenPool,
    cfg: Agreement,
    concurrency: int = 16,
    *,
    show_progress: bool = False,
    label: str = "",
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> dict[str, Any]:
    """One side's samples (stored in its results file; compared once both sides have run). A request that fails
    (no connection, an HTTP error, a timeout, a malformed answer) raises MeasurementFailed: no samples."""
    reqs = prompts(pool, cfg)
    bodies = [payload(r, True, False, return_logprob=True, top_logprobs_num=cfg.top_logprobs) for r in reqs]
    samples: list[dict[str, Any]] = [{}] * len(reqs)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"{label} agreement samples".strip(), total=len(reqs))

        def done(i: int, out: dict[str, Any]) -> None:
            samples[i] = sample(url, out)
            bar.advance(task)

        asyncio.run(post_all(url, bodies, concurrency, what="agreement", timeout_s=timeout_s, on_done=done))
    return {"token_source": pool.source, "prompt_len": cfg.prompt_len, "tokens": cfg.tokens, "samples": samples}


def matched_prefix(a: list[int], b: list[int], n: int) -> int:
    k = 0
    while k < min(n, len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def margin(ref: dict[str, Any], k: int, other_token: int) -> float | None:
    """At step k, how far below its own choice the reference side put the token the other side chose
    (None: the reference's top-k at k is unknown or does not contain it, i.e. the margin is large)."""
    tops = ref.get("top") or []
    if k >= len(tops) or k >= len(ref["logprobs"]):
        return None
    top = {int(t): float(lp) for t, lp in tops[k]}
    return None if other_token not in top else max(0.0, ref["logprobs"][k] - top[other_token])


def divergence(r: dict[str, Any], o: dict[str, Any], k: int, tie_margin: float) -> dict[str, Any]:
    """One prompt's first divergence, with the reference's margin between the two choices ("base_token": the
    reference's, a key kept for the results already written)."""
    rt = r["ids"][k] if k < len(r["ids"]) else None
    ot = o["ids"][k] if k < len(o["ids"]) else None
    m = margin(r, k, ot) if ot is not None else None
    return {"pos": k, "base_token": rt, "other_token": ot, "margin": m, "near_tie": m is not None and m <= tie_margin}


def compare(ref: dict[str, Any], other: dict[str, Any], cfg: Agreement) -> dict[str, Any]:
    """`other`'s samples against the reference's (the baseline's; other: the overlay or the control): match rate
    over the first `cfg.tokens` tokens (prefix up to the first divergence), logprob diffs on the matched prefix,
    and each divergence's margin (near tie or not)."""
    n = cfg.tokens
    prefixes, diffs, first_div, divs = [], [], [], []
    for r, o in zip(ref["samples"], other["samples"], strict=False):
        k = matched_prefix(r["ids"], o["ids"], n)
        prefixes.append(k)
        first_div.append(None if k == n else k)
        diffs += [abs(x - y) for x, y in zip(r["logprobs"][:k], o["logprobs"][:k], strict=False)]
        if k < n:
            divs.append(divergence(r, o, k, cfg.tie_margin))
    total = n * max(len(prefixes), 1)
    d = np.asarray(diffs or [0.0])
    res = {
        "prompts": len(prefixes),
        "tokens": n,
        "match_rate": sum(prefixes) / total,
        "prompts_fully_matched": sum(k == n for k in prefixes),
        "first_divergence": first_div,
        "divergences": divs,
        "near_tie_divergences": sum(x["near_tie"] for x in divs),
        "tie_margin": cfg.tie_margin,
        "max_logprob_diff": float(d.max()),
        "mean_logprob_diff": float(d.mean()),
        "min_token_match": cfg.min_token_match,
        "max_logprob_diff_limit": cfg.max_logprob_diff,
        "mean_logprob_diff_limit": cfg.mean_logprob_diff,
        "errors": sum(bool(s.get("error")) for side in (ref, other) for s in side["samples"]),
    }
    res["passed"] = (
        res["match_rate"] >= cfg.min_token_match
        and res["max_logprob_diff"] <= cfg.max_logprob_diff
        and res["mean_logprob_diff"] <= cfg.mean_logprob_diff
        and len(prefixes) == cfg.prompts
        and res["errors"] == 0  # samples of failed requests (older files) are not a measurement
    )
    return res


def unexplained(res: dict[str, Any]) -> int:
    return len(res["divergences"]) - res["near_tie_divergences"]


def calibrated(overlay: dict[str, Any], control: dict[str, Any], cfg: Agreement) -> dict[str, Any]:
    """The overlay judged against stock's own disagreement (baseline vs control, same prompts): it must match
    about as long, differ in logprobs by at most `noise_factor` x what the control differs, and have no more
    divergences that are not near ties than the control has. Returns the criteria with their numbers."""
    floor = max(control["mean_logprob_diff"], 1e-3)  # a control identical to the baseline still allows rounding
    crit = {
        "match_rate": (overlay["match_rate"], control["match_rate"] - cfg.match_slack),
        "mean_logprob_diff": (overlay["mean_logprob_diff"], cfg.noise_factor * floor),
        "unexplained_divergences": (unexplained(overlay), unexplained(control)),
    }
    ok = {
        "match_rate": crit["match_rate"][0] >= crit["match_rate"][1],
        "mean_logprob_diff": crit["mean_logprob_diff"][0] <= crit["mean_logprob_diff"][1],
        "unexplained_divergences": crit["unexplained_divergences"][0] <= crit["unexplained_divergences"][1],
    }
    errors_ok = overlay["errors"] == 0 and overlay["prompts"] == cfg.prompts
    return {"criteria": {k: {"value": v, "limit": lim, "ok": ok[k]} for k, (v, lim) in crit.items()},
            "passed": all(ok.values()) and errors_ok}  # fmt: skip
