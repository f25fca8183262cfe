"""Agreement between the two sides, for synthetic weights where GSM8K means nothing: the same seeded random
prompts, greedy decoding, token logprobs; compare greedy tokens up to each prompt's first divergence and
the logprobs on that matched prefix (after a divergence the contexts differ, so nothing later is comparable).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from speedrun.eval.client import GenRequest, payload, post_json, session
from speedrun.eval.prompts import TokenPool, random_prompts
from speedrun.recipe import Agreement

SEED = 20240607


def prompts(pool: TokenPool, cfg: Agreement, seed: int = SEED) -> list[GenRequest]:
    rows = random_prompts(pool, cfg.prompts, cfg.prompt_len, cfg.tokens, 1.0, seed)
    return [GenRequest(ids, n) for ids, n in rows]


def parse_logprobs(out: dict[str, Any]) -> tuple[list[int], list[float]]:
    """SGLang's `meta_info.output_token_logprobs`: [[logprob, token_id, text|None], ...]."""
    rows = (out.get("meta_info") or {}).get("output_token_logprobs") or []
    return [int(r[1]) for r in rows], [float(r[0]) for r in rows]


async def _collect(url: str, reqs: list[GenRequest], concurrency: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    async with session() as http:

        async def one(r: GenRequest) -> dict[str, Any]:
            async with sem:
                try:
                    out = await post_json(http, f"{url}/generate", payload(r, True, False, return_logprob=True))
                except Exception as exc:  # recorded; the comparison counts it as no match
                    return {"ids": [], "logprobs": [], "error": f"{type(exc).__name__}: {exc}"}
            ids, lps = parse_logprobs(out)
            return {"ids": ids, "logprobs": lps}

        return await asyncio.gather(*(one(r) for r in reqs))


def collect(url: str, pool: TokenPool, cfg: Agreement, concurrency: int = 16) -> dict[str, Any]:
    """One side's samples (stored in its results file; compared once both sides have run)."""
    reqs = prompts(pool, cfg)
    return {
        "token_source": pool.source,
        "prompt_len": cfg.prompt_len,
        "tokens": cfg.tokens,
        "samples": asyncio.run(_collect(url, reqs, concurrency)),
    }


def matched_prefix(a: list[int], b: list[int], n: int) -> int:
    k = 0
    while k < min(n, len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def compare(base: dict[str, Any], over: dict[str, Any], cfg: Agreement) -> dict[str, Any]:
    """Match rate over the first `cfg.tokens` tokens (prefix up to the first divergence) and logprob diffs."""
    n = cfg.tokens
    prefixes, diffs, first_div = [], [], []
    for b, o in zip(base["samples"], over["samples"], strict=False):
        k = matched_prefix(b["ids"], o["ids"], n)
        prefixes.append(k)
        first_div.append(None if k == n else k)
        diffs += [abs(x - y) for x, y in zip(b["logprobs"][:k], o["logprobs"][:k], strict=False)]
    total = n * max(len(prefixes), 1)
    d = np.asarray(diffs or [0.0])
    res = {
        "prompts": len(prefixes),
        "tokens": n,
        "match_rate": sum(prefixes) / total,
        "prompts_fully_matched": sum(k == n for k in prefixes),
        "first_divergence": first_div,
        "max_logprob_diff": float(d.max()),
        "mean_logprob_diff": float(d.mean()),
        "min_token_match": cfg.min_token_match,
        "max_logprob_diff_limit": cfg.max_logprob_diff,
        "mean_logprob_diff_limit": cfg.mean_logprob_diff,
        "errors": sum(bool(s.get("error")) for side in (base, over) for s in side["samples"]),
    }
    res["passed"] = (
        res["match_rate"] >= cfg.min_token_match
        and res["max_logprob_diff"] <= cfg.max_logprob_diff
        and res["mean_logprob_diff"] <= cfg.mean_logprob_diff
        and len(prefixes) == cfg.prompts
    )
    return res
