"""Our SGLang client: streams `/generate` with input ids, bounded by a semaphore, one trace per request.

Only `meta_info.completion_tokens` is read from each chunk (by regex: SGLang resends the cumulative output
every chunk, and JSON-parsing all of it is O(n^2) per request on the client's one thread); a chunk is parsed
in full only when it may carry an error or an abort.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from speedrun.eval.trace import RequestTrace

COMPLETION_RE = re.compile(rb'"completion_tokens":\s*(\d+)')
READ_BUFSIZE = 10 * 1024**2  # SGLang's bench uses 10 MB too: long cumulative chunks overflow aiohttp's 64 KB


@dataclass
class GenRequest:
    input_ids: list[int]
    max_new_tokens: int


def session(timeout_s: float = 6 * 3600) -> aiohttp.ClientSession:
    """No connection cap (aiohttp's default of 100 would silently limit concurrency 128)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        read_bufsize=READ_BUFSIZE,
        connector=aiohttp.TCPConnector(limit=0),
    )


def payload(req: GenRequest, ignore_eos: bool, stream: bool, **extra: Any) -> dict[str, Any]:
    params = {"temperature": 0.0, "max_new_tokens": req.max_new_tokens, "ignore_eos": ignore_eos}
    return {"input_ids": req.input_ids, "sampling_params": params, "stream": stream, **extra}


def chunk_error(data: bytes) -> str | None:
    """The error an SSE chunk reports (an `error` object or an `abort` finish), else None."""
    if b'"error"' not in data and b'"abort"' not in data:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if isinstance(obj.get("error"), dict | str):
        err = obj["error"]
        return str(err.get("message", err) if isinstance(err, dict) else err)
    finish = (obj.get("meta_info") or {}).get("finish_reason") or {}
    if isinstance(finish, dict) and finish.get("type") == "abort":
        return f"aborted: {finish.get('message', '')}"
    return None


async def stream_one(
    http: aiohttp.ClientSession, url: str, req: GenRequest, trace: RequestTrace, origin: float, ignore_eos: bool = True
) -> None:
    """Fill `trace` from one streamed request (also when it fails or is cancelled half-way)."""
    st = time.perf_counter()
    trace.start = st - origin
    done, malformed = False, ""
    try:
        async with http.post(f"{url}/generate", json=payload(req, ignore_eos, stream=True)) as resp:
            if resp.status != 200:
                trace.error = f"HTTP {resp.status}: {(await resp.text())[:500]}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                now = time.perf_counter() - st
                trace.latency = now
                data = line[6:] if line.startswith(b"data: ") else line
                if data == b"[DONE]":
                    done = True
                    continue
                err = chunk_error(data)
                if err:
                    trace.error = err
                    return
                m = COMPLETION_RE.search(data) if data[:1] == b"{" and data[-1:] == b"}" else None
                if m:
                    trace.add_chunk(now, int(m.group(1)))
                elif not malformed:
                    malformed = f"malformed stream chunk: {data[:200]!r}"
        # a request that brought no token is a failure, never a 0-token success (its TTFT of 0 would
        # pull the mean down); the first thing that went wrong is its error
        trace.success = done and trace.output_len > 0
        if not trace.success:
            trace.error = malformed or ("stream ended without [DONE]" if not done else "stream brought no token")
    except asyncio.CancelledError:
        trace.error = trace.error or "cancelled"
        raise
    except Exception as exc:  # any failure of one request is that request's result, never the run's end
        trace.error = f"{type(exc).__name__}: {exc}"


def arrival_gaps(n: int, request_rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: none at rate inf, else Poisson arrivals (SGLang's default)."""
    if request_rate == float("inf"):
        return [0.0] * n
    return np.random.default_rng(seed).exponential(1.0 / request_rate, size=n).tolist()


async def run_requests(
    url: str,
    reqs: Sequence[GenRequest],
    concurrency: int,
    *,
    ignore_eos: bool = True,
    request_rate: float = float("inf"),
    seed: int = 0,
    timeout_s: float | None = None,
    alive: Callable[[], bool] | None = None,
    on_done: Callable[[RequestTrace], None] | None = None,
) -> tuple[list[RequestTrace], float]:
    """Send all requests (at most `concurrency` in flight); returns the traces and the run's wall time.

    A timeout, or `alive()` turning False, cancels what is still running: those traces say why."""
    traces = [RequestTrace(prompt_len=len(r.input_ids), max_new_tokens=r.max_new_tokens) for r in reqs]
    sem = asyncio.Semaphore(concurrency)
    origin = time.perf_counter()
    async with session() as http:

        async def one(req: GenRequest, trace: RequestTrace) -> None:
            async with sem:
                await stream_one(http, url, req, trace, origin, ignore_eos)
            if on_done:
                on_done(trace)

        tasks = []
        for req, trace, gap in zip(reqs, traces, arrival_gaps(len(reqs), request_rate, seed), strict=False):
            tasks.append(asyncio.create_task(one(req, trace)))
            if gap:  # after the request, as SGLang's get_request does: the first goes out at once
                await asyncio.sleep(gap)
        reason = await _wait(tasks, timeout_s, alive)
        if reason:
            for task, trace in zip(tasks, traces, strict=False):
                if not task.done():
                    task.cancel()
                    trace.error = reason
            await asyncio.gather(*tasks, return_exceptions=True)
    return traces, time.perf_counter() - origin


async def _wait(tasks: list[asyncio.Task], timeout_s: float | None, alive: Callable[[], bool] | None) -> str:
    """Wait for all tasks; returns '' or why the rest must be cancelled."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = set(tasks)
    while pending:
        step = 2.0 if deadline is None else max(0.0, min(2.0, deadline - time.monotonic()))
        _, pending = await asyncio.wait(pending, timeout=step)
        if not pending:
            break
        if deadline is not None and time.monotonic() >= deadline:
            return f"scenario timed out after {timeout_s:g} s"
        if alive is not None and not alive():
            return "server died"
    return ""


async def post_json(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One non-streamed request; raises on HTTP errors with the server's message, and on an answer that is not
    a JSON object."""
    async with http.post(url, json=body) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from {url}: {text[:500]}")
        try:
            out = json.loads(text)
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise ValueError(f"malformed answer from {url} (not a JSON object): {text[:200]!r}")
        return out


class MeasurementFailed(RuntimeError):
    """The server could not be measured (unreachable, an HTTP error, a timeout, a malformed answer): the run
    failed, and no score may stand for it."""


def why(exc: BaseException, url: str, timeout_s: float) -> str:
    """One request's failure, in words that name the server."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors with an empty message
        return f"no answer from {url} within {timeout_s:g} s (timeout)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {url} ({exc})"
    if isinstance(exc, RuntimeError | ValueError) and url in str(exc):  # post_json's: HTTP status, malformed
        return str(exc)
    return f"{url}: {type(exc).__name__}: {exc}"


async def post_all(
    url: str,
    bodies: Sequence[dict[str, Any]],
    concurrency: int,
    *,
    what: str,
    timeout_s: float,
    on_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """POST every body to `url`/generate (at most `concurrency` in flight, `timeout_s` per request); answers in
    order. The first failed request cancels the rest and raises MeasurementFailed naming the server: a score
    over partly failed requests would be a lie."""
    sem = asyncio.Semaphore(concurrency)
    answered = 0
    async with session(timeout_s) as http:

        async def one(i: int, body: dict[str, Any]) -> dict[str, Any]:
            nonlocal answered
            async with sem:
                out = await post_json(http, f"{url}/generate", body)
            answered += 1
            if on_done:
                on_done(i, out)
            return out

        tasks = [asyncio.create_task(one(i, b)) for i, b in enumerate(bodies)]
        try:
            return await asyncio.gather(*tasks)
        except Exception as exc:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            msg = f"{what}: {why(exc, url, timeout_s)} (after {answered}/{len(bodies)} answers)"
            raise MeasurementFailed(msg) from None
