"""A stand-in for an SGLang server, for CPU tests: `/health`, `/model_info`, `/server_info` and `/generate`
in SGLang's wire format (SSE `data: {...}` chunks with cumulative `text`/`output_ids`/`meta_info`, then
`data: [DONE]`; or one JSON object when not streaming).

The "model" is a deterministic function of the prompt, so two servers agree unless told to differ
(`--diverge-every`, `--logprob-noise`). With `top_logprobs_num` each step also lists the runner-up token (next
id) `--tie-gap` nats below the choice; a diverging server picks the token `--diverge-offset` ids further (1:
that runner-up, a near tie; large: a token outside the other side's top-k). Text prompts in GSM8K's few-shot
form are answered from the data set (`--gsm8k-dir`), wrong on purpose for every `--wrong-every`-th question.
`--die-after N` kills the process during the N-th request, to test mid-run failures. `--ignore-sigterm` makes a
server that only SIGKILL stops (a wedged teardown), `--child-pid-file F` adds a worker process to its process group
(as SGLang's schedulers are), to test that teardown leaves nothing behind. Faults of a live server:
`--http-status CODE` answers every `/generate` with that status, `--garbage-every N` answers every N-th one with
malformed data (status 200); `--ttft-ms` large enough makes a client time out. `/server_info` counts requests (and
in flight), and lists the PD `bootstrap_room`s SGLang's router put in them, to test routing.

Started with SGLang's own launch flags (the real `build()` argv, `sglang.launch_server` swapped for this
module), it ignores the ones it does not know, and its speed can depend on them: SPEEDRUN_FAKE_FLAG_TPOT_MS
(a JSON map `{"--attention-backend=flashmla": 2.0, "--disable-radix-cache": 1.0}`) adds to --tpot-ms for each
flag it was started with, and SPEEDRUN_FAKE_FAIL_FLAGS (a JSON list of the same keys) makes it exit before
serving, like a server that cannot start with that configuration.

    python -m speedrun.eval.fakeserver --port 30000 --tpot-ms 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

VOCAB = 8192


def next_token(context: list[int], step: int) -> int:
    return (sum(context[-4:]) * 31 + 7 * step + len(context)) % VOCAB


def token_logprob(token: int, step: int) -> float:
    return -((token * 13 + step) % 97) / 40.0


class Model:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.answers: dict[str, str] = {}
        if args.gsm8k_dir:
            for line in (Path(args.gsm8k_dir) / "test.jsonl").read_text().splitlines():
                row = json.loads(line)
                self.answers[row["question"].strip()] = row["answer"]

    def tokens(self, ids: list[int], n: int) -> tuple[list[int], list[float], list[list[list[Any]]]]:
        ctx, out, lps, tops = list(ids), [], [], []
        diverge = self.args.diverge_every and sum(ids) % self.args.diverge_every == 0
        for step in range(n):
            tok = next_token(ctx, step)
            if diverge and step == self.args.diverge_at:
                tok = (tok + self.args.diverge_offset) % VOCAB
            lp = token_logprob(tok, step)
            if self.args.logprob_noise:
                lp += self.args.logprob_noise * ((zlib.crc32(bytes([step % 256, tok % 256])) % 3) - 1)
            ctx.append(tok)
            out.append(tok)
            lps.append(lp)
            tops.append([[lp, tok, None], [lp - self.args.tie_gap, (tok + 1) % VOCAB, None]])
        return out, lps, tops

    def answer_text(self, prompt: str) -> str:
        """GSM8K: the reference solution of the last question in the prompt (or a wrong one on purpose)."""
        q = prompt.rsplit("Question:", 1)[-1].rsplit("\nAnswer:", 1)[0].strip()
        ans = self.answers.get(q)
        if ans is None:
            return " I do not know.\n\nQuestion: what next?"
        if self.args.wrong_every and zlib.crc32(q.encode()) % self.args.wrong_every == 0:
            num = ans.rsplit("####", 1)[-1].strip().replace(",", "")
            ans = ans.rsplit("####", 1)[0] + f"#### {int(float(num)) + 1}"
        return " " + ans + "\n\nQuestion: Another one?"


def apply_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


class State:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.model = Model(args)
        self.inflight = 0
        self.max_inflight = 0
        self.requests = 0
        self.bootstrap_rooms: list[int] = []  # PD: the room SGLang's router pairs a prefill and a decode request by
        self.on_request: Callable[[], object] = lambda: None


async def generate(request: web.Request) -> web.StreamResponse:
    st: State = request.app[STATE]
    body = await request.json()
    st.requests += 1
    if "bootstrap_room" in body:
        st.bootstrap_rooms.append(body["bootstrap_room"])
    st.on_request()
    if st.args.die_after and st.requests >= st.args.die_after:
        asyncio.get_running_loop().call_later(0.05, os._exit, 3)
    if st.args.http_status:
        err = {"error": {"message": "injected fault (--http-status)", "code": st.args.http_status}}
        return web.json_response(err, status=st.args.http_status)
    st.inflight += 1
    st.max_inflight = max(st.max_inflight, st.inflight)
    try:
        if st.args.garbage_every and st.requests % st.args.garbage_every == 0:
            return await _garbage(request, st, body)
        return await _generate(request, st, body)
    finally:
        st.inflight -= 1


async def _generate(request: web.Request, st: State, body: dict[str, Any]) -> web.StreamResponse:
    params = body.get("sampling_params") or {}
    n = int(params.get("max_new_tokens", 16))
    text_prompt = body.get("text")
    ids = body.get("input_ids") or [ord(c) % VOCAB for c in (text_prompt or "")[-64:]]
    if len(ids) > st.args.max_len:
        err = {"error": {"message": f"input too long ({len(ids)} > {st.args.max_len})", "code": 400}}
        return web.json_response(err, status=400)
    toks, lps, tops = st.model.tokens(ids, n)
    tops = tops if body.get("top_logprobs_num") else None
    text = apply_stop(st.model.answer_text(text_prompt), params.get("stop") or []) if text_prompt else ""
    if text_prompt:
        keep = max(1, len(text.split()))
        toks, lps, tops = toks[:keep], lps[:keep], tops and tops[:keep]
    want_lp = bool(body.get("return_logprob"))
    if not body.get("stream"):
        await asyncio.sleep((st.args.ttft_ms + st.args.tpot_ms * len(toks)) / 1000)
        return web.json_response(chunk(text, toks, lps, len(ids), True, want_lp, tops))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(st.args.ttft_ms / 1000)
    every = max(1, st.args.stream_interval)
    for k in range(1, len(toks) + 1):
        if k > 1:
            await asyncio.sleep(st.args.tpot_ms / 1000)
        if k % every == 0 or k == len(toks):
            part = text[: len(text) * k // len(toks)]
            data = chunk(part, toks[:k], lps[:k], len(ids), k == len(toks), want_lp, tops and tops[:k])
            await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _garbage(request: web.Request, st: State, body: dict[str, Any]) -> web.StreamResponse:
    """A broken answer with status 200: a stream of truncated JSON chunks (no token count) ending in [DONE], or
    a non-JSON body."""
    await asyncio.sleep(st.args.ttft_ms / 1000)
    if not body.get("stream"):
        return web.Response(text="<html>502 upstream hiccup</html>")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(3):
        await resp.write(b'data: {"text": "trunc\n\n')
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def chunk(
    text: str, toks: list[int], lps: list[float], prompt_len: int, last: bool, want_lp: bool, tops: list | None = None
) -> dict:
    meta: dict[str, Any] = {
        "prompt_tokens": prompt_len,
        "completion_tokens": len(toks),
        "cached_tokens": 0,
        "finish_reason": {"type": "length", "length": len(toks)} if last else None,
    }
    if want_lp:
        meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(lps, toks, strict=False)]
        if tops is not None:
            meta["output_top_logprobs"] = tops
    return {"text": text, "output_ids": list(toks), "meta_info": meta}


async def health(request: web.Request) -> web.Response:
    return web.Response(text="")


async def server_info(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    info = {"max_inflight": st.max_inflight, "inflight": st.inflight, "requests": st.requests, "fake": True}
    return web.json_response(info | {"bootstrap_rooms": st.bootstrap_rooms[-1000:]})


async def model_info(request: web.Request) -> web.Response:
    return web.json_response({"model_path": "fake", "tokenizer_path": None, "is_generation": True})


async def start_profile(request: web.Request) -> web.Response:
    """Like SGLang's by-stage profiling, with the real torch profiler over a CPU stand-in for decode steps:
    the trace lands in `output_dir` as `<id>-TP-0-DECODE.trace.json.gz` a moment after the call."""
    body = await request.json()
    out, steps = Path(body.get("output_dir") or "/tmp"), int(body.get("num_steps") or 5)
    threading.Thread(target=_write_trace, args=(out, steps), daemon=True).start()
    return web.Response(text="Start profiling.\n")


def _write_trace(out: Path, steps: int) -> None:
    import torch

    a = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            torch.mm(a, a).relu_()
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out / f"{time.time():.0f}-TP-0-DECODE.trace.json.gz"))


STATE = web.AppKey("state", State)


def make_app(args: argparse.Namespace) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE] = State(args)
    app.router.add_get("/health", health)
    app.router.add_get("/server_info", server_info)
    app.router.add_get("/model_info", model_info)
    app.router.add_post("/generate", generate)
    app.router.add_post("/start_profile", start_profile)
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fakeserver", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft-ms", type=float, default=5.0)
    p.add_argument("--tpot-ms", type=float, default=1.0)
    p.add_argument("--stream-interval", type=int, default=1)
    p.add_argument("--max-len", type=int, default=1 << 20)
    p.add_argument("--diverge-every", type=int, default=0)
    p.add_argument("--diverge-at", type=int, default=3)
    p.add_argument("--diverge-offset", type=int, default=1)
    p.add_argument("--tie-gap", type=float, default=0.05)
    p.add_argument("--logprob-noise", type=float, default=0.0)
    p.add_argument("--gsm8k-dir", default=None)
    p.add_argument("--wrong-every", type=int, default=0)
    p.add_argument("--die-after", type=int, default=0)
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--child-pid-file", default=None)
    p.add_argument("--http-status", type=int, default=0, help="fault: every /generate answers this HTTP status")
    p.add_argument("--garbage-every", type=int, default=0, help="fault: every N-th /generate answers malformed data")
    return p


@contextlib.contextmanager
def background(**overrides: Any) -> Iterator[tuple[str, State]]:
    """Serve in a thread of this process on a free port (for client tests); yields (url, state).
    `die_after` would end the whole process here: use a subprocess (`python -m ...`) for that."""
    args = argparse.Namespace(**{**vars(parser().parse_args(["--port", "0"])), **overrides})
    app = make_app(args)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", app[STATE]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def fake_overlay_report(app: web.Application) -> None:
    """Like the plugin in a scheduler: the settings read once (SPEEDRUN_SETTINGS from the launcher, or the loose
    variables), then a per-process report in their report_dir, one call per request."""
    from speedrun.overlays import environ, report

    settings = environ.load()
    ops = list(settings.ops)
    if not ops or settings.report_dir is None:
        return
    report.start(role="scheduler", tp_rank=0, ops_requested=ops, settings=settings.record())
    for op in ops:
        report.add_hook({"op": op, "target": "fakeserver", "kind": "around"})
    report.record(applied=[f"fakeserver:{op}" for op in ops])  # as the plugin records its hook targets
    app[STATE].on_request = lambda: [report.called(f"{op}:fake") for op in ops]

    async def flush(_app: web.Application) -> None:
        report.flush(force=True)

    app.on_shutdown.append(flush)


def flag_keys(extra: list[str]) -> list[str]:
    """Unknown flags as `--flag=value` (or `--flag` for a switch), the keys of the env maps."""
    keys = []
    for i, tok in enumerate(extra):
        if tok.startswith("--"):
            nxt = extra[i + 1] if i + 1 < len(extra) else None
            keys.append(tok if nxt is None or nxt.startswith("--") else f"{tok}={nxt}")
    return keys


def apply_flag_env(args: argparse.Namespace, extra: list[str]) -> None:
    """Slow down by SPEEDRUN_FAKE_FLAG_TPOT_MS, or refuse to start by SPEEDRUN_FAKE_FAIL_FLAGS."""
    keys = flag_keys(extra)
    refused = [k for k in json.loads(os.environ.get("SPEEDRUN_FAKE_FAIL_FLAGS") or "[]") if k in keys]
    if refused:
        print(f"fakeserver: cannot start with {' '.join(refused)} (SPEEDRUN_FAKE_FAIL_FLAGS)", flush=True)
        raise SystemExit(1)
    delays = json.loads(os.environ.get("SPEEDRUN_FAKE_FLAG_TPOT_MS") or "{}")
    args.tpot_ms += sum(float(delays[k]) for k in keys if k in delays)
    print(f"fakeserver: flags {keys}; tpot {args.tpot_ms} ms", flush=True)


class OneLineHttp2Probe(logging.Filter):
    """SGLang's router first probes each worker for gRPC (an HTTP/2 preface); aiohttp logs the rejection with a
    traceback, which reads like a crash in a log tail. Say it in one line instead (uvicorn, SGLang's, does too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and "PRI/Upgrade" in str(exc):
            record.msg, record.args, record.exc_info = "rejected an HTTP/2 preface (a gRPC probe)", (), None
        return True


def main(argv: list[str] | None = None) -> None:
    args, extra = parser().parse_known_args(argv)
    apply_flag_env(args, extra)
    logging.getLogger("aiohttp.server").addFilter(OneLineHttp2Probe())
    app = make_app(args)
    fake_overlay_report(app)
    if args.ignore_sigterm:  # set before the child starts: an ignored signal stays ignored across exec
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child_pid_file:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        Path(args.child_pid_file).write_text(str(child.pid))
    web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=not args.ignore_sigterm)


if __name__ == "__main__":
    main()
