"""One side's server for the evaluation commands: an existing URL, or launched from the recipe (log, overlay
reports and launch command kept in the side's folder) and always torn down. `speedrun launch` builds its server
through the same two steps (model_path, default_spec: launch_spec, dry_run_text)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from speedrun.eval.bench import Target
from speedrun.eval.prompts import TokenPool, token_pool
from speedrun.launch.command import LaunchSpec, build
from speedrun.recipe import Recipe, Side

SpecFactory = Callable[[Recipe, Side, int, Path, str], LaunchSpec]  # (recipe, side, port, report_dir, model)


def default_spec(recipe: Recipe, side: Side, port: int, report_dir: Path, model_path: str, *,
                 host: str = "127.0.0.1", concurrency: int | None = None) -> LaunchSpec:  # fmt: skip
    """The side's single-server launch (`concurrency`: the recipe's server_by_concurrency setting)."""
    return build(recipe, side=side, port=port, host=host, model_path=model_path, report_dir=report_dir,
                 concurrency=concurrency)  # fmt: skip


def model_path(recipe: Recipe, side: Side, generate: bool = True) -> str:
    """The side's model: a HF id or folder, or the synthetic folder (generated once and cached; `generate` False:
    only its path, e.g. for a dry run)."""
    model = recipe.model_for(Side(side).stock)
    if model.synthetic is None:
        return model.path
    from speedrun.synth import DEFAULT_ROOT, ensure_model  # lazily: needs `tokenizers`, only for synthetic recipes

    return str(ensure_model(recipe, baseline=Side(side).stock) if generate else DEFAULT_ROOT / model.path)


def launch_spec(
    r: Recipe, side: Side, *, port: int, host: str, out: Path, generate: bool, concurrency: int | None = None
) -> tuple[LaunchSpec, Path]:
    """`speedrun launch`'s server: the side's launch (command + environment), built as `speedrun run` builds its
    servers, and its run folder under `out`; `generate` makes a synthetic model folder; `concurrency` picks the
    recipe's server_by_concurrency setting."""
    run_dir = out / f"{r.name}-{side}-{time.strftime('%Y%m%d-%H%M%S')}"
    model = model_path(r, side, generate=generate)
    return default_spec(r, side, port, run_dir / "reports", model, host=host, concurrency=concurrency), run_dir


def dry_run_text(
    r: Recipe,
    side: Side,
    *,
    port: int = 30000,
    host: str = "127.0.0.1",
    out: Path = Path(".runs/launch"),
    concurrency: int | None = None,
) -> str:
    """What `speedrun launch --dry-run` prints: a comment naming the side, then one copy-pasteable line."""
    spec, _ = launch_spec(r, side, port=port, host=host, out=out, generate=False, concurrency=concurrency)
    return f"# {spec.side} side of {r.name}\n{spec.shell()}"


def server_model_info(url: str) -> list[str]:
    """model/tokenizer paths a running SGLang reports (to find its vocabulary locally)."""
    try:
        with urllib.request.urlopen(f"{url}/model_info", timeout=10) as r:
            info = json.loads(r.read())
    except (OSError, ValueError):
        return []
    return [p for p in (info.get("tokenizer_path"), info.get("model_path")) if isinstance(p, str)]


def pool_for(recipe: Recipe | None, url: str | None = None, model: str | None = None) -> TokenPool:
    """The prompt vocabulary: the overlay side's model decides, so both sides get identical prompts."""
    cands: list[str | None] = [model]
    if recipe is not None:
        cands += [recipe.model.tokenizer, recipe.model.path]
    if url:
        cands += server_model_info(url)
    return token_pool(cands)


@contextlib.contextmanager
def launched(
    recipe: Recipe,
    side: Side,
    side_dir: Path,
    *,
    spec_for: SpecFactory = default_spec,
    model: str | None = None,
    startup_timeout_s: float = 1200,
    show_progress: bool = True,
    on_spec: Callable[[LaunchSpec], None] | None = None,
) -> Iterator[tuple[Target, LaunchSpec]]:
    """Start the side's server on a free port, yield where to reach it, stop it (whole process group). A recipe
    with a one-node `deployment` starts all its servers and SGLang's router, and yields the router (spec_for is
    for single servers: not used then)."""
    from speedrun.launch.server import free_port, running

    if recipe.deployment is not None:
        with _deployment(recipe, side, side_dir, model, startup_timeout_s, show_progress, on_spec) as pair:
            yield pair
        return

    port = free_port()
    spec = spec_for(recipe, side, port, side_dir / "overlay-reports", model or model_path(recipe, side))
    if on_spec is not None:  # recorded before the start, so a server that never comes up is still documented
        on_spec(spec)
    with running(
        spec, side_dir / "server.log", port=port, timeout_s=startup_timeout_s, show_progress=show_progress
    ) as srv:
        yield Target(srv.url, alive=srv.alive, log_tail=srv.log_tail), spec


@contextlib.contextmanager
def _deployment(recipe, side, side_dir, model, startup_timeout_s, show_progress, on_spec):
    from speedrun.launch.cluster import local_plan, running_cluster
    from speedrun.launch.deploy import PlanSpec

    plan = local_plan(recipe, side, side_dir, model_path=model or model_path(recipe, side))
    spec = PlanSpec(plan)
    if on_spec is not None:  # every command, recorded before the start
        on_spec(spec)
    with running_cluster(plan, 0, timeout_s=startup_timeout_s, show_progress=show_progress) as cluster:
        log_tail = cluster.router.log_tail if cluster.router else None
        yield Target(cluster.url, alive=cluster.alive, log_tail=log_tail), spec
