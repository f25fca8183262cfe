"""`speedrun launch RECIPE` for a recipe with a `deployment`: the dry run per node and role, or this node's share
(`--node-rank`), with the router on the head node, serving until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from speedrun.console import cli_console
from speedrun.launch.cluster import Cluster, report_rows, running_cluster
from speedrun.launch.deploy import Plan, PlanError, dry_run_text, make_plan
from speedrun.launch.router import free_port_except, router_workers
from speedrun.launch.server import ServerError, one_request
from speedrun.overlays.environ import PluginSettings
from speedrun.recipe import Recipe, Side

console = cli_console()
err = cli_console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def plan_for(
    r: Recipe,
    side: Side,
    *,
    out: Path,
    model_path: str,
    hosts: str | None,
    host: str,
    port: int,
    dry_run: bool,
) -> Plan:
    """The deployment's plan, or a one-line error. A real launch over several nodes needs their addresses."""
    addrs = [h.strip() for h in hosts.split(",")] if hosts else None
    if addrs is None and r.deployment.nodes > 1 and not dry_run:
        fail(f"--hosts: {r.name} spans {r.deployment.nodes} nodes: give their addresses in node-rank order, "
             "e.g. --hosts 10.0.0.1,10.0.0.2")  # fmt: skip
    servers = range(r.deployment.worker_port, r.deployment.worker_port + len(r.placements()))
    try:
        return make_plan(
            r,
            side=side,
            run_dir=out / f"{r.name}-{side}",  # the same folder on every node: on a shared --out, one run's reports
            model_path=model_path,
            hosts=addrs,
            router_host=host,
            router_port=port,
            metrics_port=None if dry_run else free_port_except({port, *servers}),  # 29000 would collide
        )
    except PlanError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def launch_deployment(
    r: Recipe,
    side: Side,
    *,
    dry_run: bool,
    node_rank: int | None,
    hosts: str | None,
    host: str,
    port: int,
    timeout: float,
    out: Path,
    check: bool,
    model_path: str,
) -> None:
    nodes = r.deployment.nodes
    if node_rank is not None and node_rank >= nodes:
        fail(f"--node-rank {node_rank}: {r.name} has nodes 0..{nodes - 1}")
    plan = plan_for(r, side, out=out, model_path=model_path, hosts=hosts, host=host, port=port, dry_run=dry_run)
    if dry_run:  # plain print: copy-pasteable lines, never wrapped
        print(dry_run_text(plan, node_rank))
        return
    if node_rank is None and nodes > 1:
        fail(f"--node-rank: {r.name} spans {nodes} nodes: run `speedrun launch {r.name} --node-rank N --hosts ...` "
             "on each (0 is the head: it starts the router)")  # fmt: skip
    serve(plan, node_rank or 0, timeout, check)


def serve(plan: Plan, node: int, timeout: float, check: bool) -> None:
    try:
        with running_cluster(plan, node, timeout_s=timeout) as cluster:
            if cluster.router is None:
                console.print(f"node {node}: servers up; the router runs on node 0", highlight=False)
            else:
                pid = cluster.router.proc.pid
                console.print(f"[green]healthy[/]: router (pid {pid}) at {cluster.url}, log {cluster.router.log_path}")
                if check:
                    console.print(f"one request: {one_request(cluster.url)!r}", highlight=False)
                    time.sleep(2.5)  # let the schedulers flush their reports
                show_rows(plan, cluster)
            if check:
                return
            console.print("serving; Ctrl-C stops the router and every server process")
            watch(cluster)
    except ServerError as exc:
        fail(str(exc), 1)


def watch(cluster: Cluster) -> None:
    """Say what dies or turns unhealthy while serving; end when the router (head) or every server here is gone."""
    while cluster.alive():
        for news in cluster.events():
            err.print(news, style="yellow", highlight=False, soft_wrap=True)
        if cluster.procs and not any(srv.alive() for _, srv in cluster.procs):
            fail("every server process on this node has exited; logs in " + str(cluster.plan.run_dir / "logs"), 1)
        time.sleep(1)
    code = cluster.router.proc.returncode if cluster.router else "?"
    fail(f"the router exited with code {code}; log tail:\n{cluster.router.log_tail() if cluster.router else ''}", 1)


def show_rows(plan: Plan, cluster: Cluster) -> list[dict]:
    """One row per server instance, from the router's worker list and each instance's overlay reports."""
    ops = list(PluginSettings.from_env(plan.parts[0].spec.env).ops)
    rows = report_rows(plan, router_workers(cluster.url), ops)
    t = Table(title=f"{plan.side} deployment of {plan.recipe.name} (reports: {plan.run_dir / 'reports'})")
    for col in ("instance", "role", "url", "router", "processes", "GPU ranks", "calls", "problems"):
        t.add_column(col, overflow="fold")
    for row in rows:
        problems = "\n".join(row["problems"]) or "-"
        t.add_row(row["name"], row["role"], row["url"], row["router"], str(row["processes"]), str(row["ranks"]),
                  str(row["calls"]), f"[red]{escape(problems)}[/]" if row["problems"] else "-")  # fmt: skip
    console.print(t)
    return rows
