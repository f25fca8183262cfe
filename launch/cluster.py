"""Run one node's share of a deployment as one unit: its server processes (each in its own process group, log on
disk), on the head node (0) also SGLang's router once every server instance is healthy; every group torn down
together on exit, Ctrl-C/SIGTERM or failure (router first, so it sends nothing to a dying server). A second
Ctrl-C/SIGTERM during the teardown escalates every group still alive to SIGKILL, as for a single server."""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.launch.deploy import Part, Plan
from speedrun.launch.procgroup import signal_group
from speedrun.launch.router import router_workers
from speedrun.launch.server import Server, ServerError, say, start, wait_healthy
from speedrun.recipe import Side


def url_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Cluster:
    """This node's running share: (part, server process) pairs and, on the head node, the router."""

    plan: Plan
    node: int
    procs: list[tuple[Part, Server]] = field(default_factory=list)
    router: Server | None = None
    gone: set[str] = field(default_factory=set)  # what was already reported dead or unhealthy

    @property
    def url(self) -> str:
        return self.plan.router_url

    def alive(self) -> bool:
        """The head serves while its router runs; another node while any of its servers runs."""
        if self.router is not None:
            return self.router.alive()
        return any(srv.alive() for _, srv in self.procs)

    def events(self) -> list[str]:
        """What changed since the last call: a local server that exited, a server the router marks unhealthy."""
        news = []
        for part, srv in self.procs:
            if part.spec.side not in self.gone and not srv.alive():
                self.gone.add(part.spec.side)
                news.append(f"{srv.describe()} exited with code {srv.proc.returncode}: the router routes around it")
        listed = router_workers(self.url) if self.router is not None else None
        names = {e.url: p.placement.name for e, p in zip(self.plan.endpoints, self.plan.serving(), strict=True)}
        for w in listed or []:
            key = f"unhealthy {w.get('url')}"
            if w.get("is_healthy") is False and key not in self.gone:
                self.gone.add(key)
                news.append(f"router: {names.get(w.get('url'), '?')} ({w.get('url')}) is marked unhealthy")
        return news


def stop_all(servers: list[Server], grace_s: float = 20.0, *, interrupted: bool = False) -> None:
    """SIGTERM every group at once, then wait for each within one shared grace; an interrupt while waiting makes
    that server escalate to SIGKILL (launch/server.py) and every later one get no grace (SIGKILL at once). The
    first interrupt caught is raised again once all are gone."""
    live = [s for s in servers if not s.stopped]
    for s in live:
        signal_group(s.proc.pid, signal.SIGTERM)
    deadline, late = time.monotonic() + grace_s, None
    for s in live:
        try:
            s.stop(grace_s=0.0 if late else round(max(0.0, deadline - time.monotonic()), 1), interrupted=interrupted)
        except KeyboardInterrupt as exc:
            late = late or exc
    if late is not None:
        raise late


def clear_reports(directory: Path) -> None:
    """A rerun into the same --out must not show the last run's overlay reports as this one's."""
    for f in directory.glob("overlay-*.json"):
        f.unlink(missing_ok=True)


@contextlib.contextmanager
def running_cluster(plan: Plan, node: int, *, timeout_s: float = 1800, show_progress: bool = True) -> Iterator[Cluster]:
    """Start this node's parts, wait for the instances they belong to (the head: all of them), start the router
    (head), wait until it lists every instance healthy, yield; always tear everything down."""
    cluster = Cluster(plan, node)
    deadline = time.monotonic() + timeout_s
    try:
        for part in plan.on_node(node):  # all first: parts may share one report folder (evaluation commands)
            clear_reports(part.report_dir)
        for part in plan.on_node(node):
            cluster.procs.append((part, start(part.spec, part.log, plan.hosts[part.node], part.port)))
        mine = {p.placement.name for p, _ in cluster.procs}
        wait_instances(cluster, [p for p in plan.serving() if node == 0 or p.placement.name in mine], deadline)
        if node == 0 and plan.router is not None:
            host, port = plan.router_url.removeprefix("http://").rsplit(":", 1)
            cluster.router = start(plan.router, plan.run_dir / "router.log", host, int(port))
            wait_healthy(cluster.router, max(1.0, deadline - time.monotonic()), show_progress)
            wait_registered(cluster, deadline)
        yield cluster
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt):  # the first signal decides the exit code
            stop_all(everything(cluster), interrupted=True)
        raise
    finally:
        stop_all(everything(cluster))


def everything(cluster: Cluster) -> list[Server]:
    return ([cluster.router] if cluster.router else []) + [srv for _, srv in reversed(cluster.procs)]


def wait_instances(cluster: Cluster, serving: list[Part], deadline: float) -> None:
    """Every instance's /health answers (local or on another node); a local process that exits first is an error
    with its log tail."""
    pending = {p.placement.name: p.url for p in serving}
    n = len(pending)
    while pending:
        for _, srv in cluster.procs:
            if not srv.alive():
                raise ServerError(
                    f"{srv.describe()} exited with code {srv.proc.returncode} before the deployment was healthy; "
                    f"log {srv.log_path}:\n{srv.log_tail()}"
                )
        for name, url in list(pending.items()):
            if url_healthy(url):
                del pending[name]
                say(f"{name} healthy at {url} ({n - len(pending)} of {n})")
        if pending and time.monotonic() > deadline:
            waiting = ", ".join(f"{k} ({v})" for k, v in pending.items())
            raise ServerError(f"not healthy in time: {waiting}")
        if pending:
            time.sleep(0.5)


def wait_registered(cluster: Cluster, deadline: float) -> None:
    """The router lists every instance, healthy (it checks them itself before routing to them)."""
    want = {e.url for e in cluster.plan.endpoints}
    while True:
        listed = router_workers(cluster.url) or []
        ready = {w.get("url") for w in listed if w.get("is_healthy")}
        if want <= ready:
            return
        if not cluster.router.alive():
            raise ServerError(f"the router exited with code {cluster.router.proc.returncode}; "
                              f"log {cluster.router.log_path}:\n{cluster.router.log_tail()}")  # fmt: skip
        if time.monotonic() > deadline:
            raise ServerError(f"the router has not registered {sorted(want - ready)} in time")
        time.sleep(0.3)


def report_rows(plan: Plan, listed: list[dict] | None, ops: list[str]) -> list[dict]:
    """Per server instance: the router's word on its health (from its worker list)
    and the overlay reports of its processes (every node's share, from <run>/reports/<instance>/node*/), checked
    for one scheduler report per GPU rank with hooks applied and no error (none are expected on the stock side)."""
    from speedrun.eval.readiness.ranks import check_ranks
    from speedrun.overlays import report

    health = {w.get("url"): w.get("is_healthy") for w in listed or []}
    rows = []
    for endpoint, part in zip(plan.endpoints, plan.serving(), strict=True):
        pl = part.placement
        found = [report.read_reports(d) for d in sorted((plan.run_dir / "reports" / pl.name).glob("node*"))]
        reports = [r for f in found for r in f.reports]
        problems = [f"{f}: unreadable report: {why}" for fd in found for f, why in fd.unreadable.items()]
        ranks = pl.gpus * pl.nodes
        if ops:
            server = plan.recipe.group_server(pl.group, baseline=False)
            if server.dp > 1 and not server.dp_attention:  # dp copies repeat the tp ranks: count them only
                got = sum(r.get("role") == "scheduler" for r in reports)
                problems += [] if got == ranks else [f"{got} scheduler reports (expected {ranks})"]
            else:
                problems += check_ranks(reports, ranks, [])
            missing = [k for k in range(pl.nodes) if not list((part.report_dir.parent / f"node{k}").glob("*.json"))]
            if missing and pl.nodes > 1:  # each node writes into its own --out
                problems.append(f"no reports of node rank(s) {missing} here: put --out on a shared filesystem")
        listed_health = health.get(endpoint.url)
        rows.append(
            {
                "name": pl.name,
                "role": pl.role,
                "url": endpoint.url,
                "router": "not listed" if listed_health is None else ("healthy" if listed_health else "unhealthy"),
                "processes": len(reports),
                "ranks": ranks,
                "calls": sum(sum((r.get("calls") or {}).values()) for r in reports),
                "problems": problems,
            }
        )
    return rows


def local_plan(recipe, side: Side, side_dir: Path, *, model_path: str) -> Plan:
    """A one-node deployment to start here for an evaluation command (`speedrun bench|eval|run` without --server):
    the router on a free port, the instances on the recipe's worker ports, every process's overlay report in
    <side_dir>/overlay-reports. A multi-node one cannot be: ServerError saying how to run it instead."""
    from speedrun.launch.deploy import make_plan
    from speedrun.launch.router import free_port_except

    nodes = recipe.deployment.nodes
    if nodes > 1:
        raise ServerError(
            f"{recipe.name} spans {nodes} nodes: start it with `speedrun launch {recipe.name} --node-rank N --hosts "
            "...` on each node, then measure through its router with --server http://HEAD:PORT"
        )
    dep = recipe.deployment
    taken = set(range(dep.worker_port, dep.worker_port + len(recipe.placements())))
    router = free_port_except(taken)
    return make_plan(
        recipe,
        side=side,
        run_dir=side_dir,
        model_path=model_path,
        router_port=router,
        metrics_port=free_port_except(taken | {router}),
        report_dir=side_dir / "overlay-reports",
    )
