"""A recipe's `deployment` -> what runs where: per node, the exact `sglang.launch_server` command and environment of
every server instance (or its share of a multi-node one), and SGLang's router on the head node (node 0).

Each command is launch/command.py's single-server command for the instance's worker group, plus the flags of the
layout: `--nnodes/--node-rank/--dist-init-addr` for an instance over several nodes, `--base-gpu-id` for instances
that share a node, `--disaggregation-*` for prefill/decode servers. Ports: a node's instances serve HTTP on
deployment.worker_port, +1, ...; its prefill servers bootstrap on deployment.bootstrap_port, +1, ...
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.launch.command import LaunchSpec, build
from speedrun.launch.router import Endpoint, router_spec
from speedrun.recipe import Placement, Recipe, Side


class PlanSpec(LaunchSpec):
    """A whole deployment where one launch is recorded (results files): `shell()` gives every node's commands."""

    def __init__(self, plan: Plan):
        super().__init__(argv=list(plan.router.argv), env={}, side=plan.side)
        self.plan = plan

    def shell(self) -> str:
        return dry_run_text(self.plan)


class PlanError(ValueError):
    """A layout that cannot be launched as asked (e.g. missing node addresses); one line for the user."""


@dataclass
class Part:
    """What one node starts for one server instance: all of it, or its share of a multi-node instance."""

    placement: Placement
    node: int  # absolute node rank of the deployment
    node_rank: int  # within the instance (--node-rank); 0 serves HTTP
    host: str  # address the instance's HTTP server is reached at (its first node)
    port: int
    spec: LaunchSpec
    log: Path
    report_dir: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def serves_http(self) -> bool:
        return self.node_rank == 0


@dataclass
class Plan:
    recipe: Recipe
    side: Side
    hosts: list[str]
    run_dir: Path
    parts: list[Part] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    router: LaunchSpec | None = None
    router_url: str = ""

    def on_node(self, node: int) -> list[Part]:
        return [p for p in self.parts if p.node == node]

    def serving(self) -> list[Part]:
        """One part per instance: the one that serves its HTTP."""
        return [p for p in self.parts if p.serves_http]


def placeholder_hosts(nodes: int) -> list[str]:
    return [f"NODE{n}_ADDR" for n in range(nodes)]


def make_plan(
    recipe: Recipe,
    *,
    side: Side,
    run_dir: Path,
    model_path: str,
    hosts: list[str] | None = None,
    router_host: str = "127.0.0.1",
    router_port: int = 30000,
    metrics_port: int | None = None,
    report_dir: Path | None = None,
) -> Plan:
    """Every node's parts and the router. `hosts`: the nodes' addresses in node-rank order (default: 127.0.0.1 on
    one node, placeholders for more, which only a dry run may use). `report_dir`: one folder for every process's
    overlay report (file names carry role, rank and pid), instead of one per instance and node."""
    dep = recipe.deployment
    assert dep is not None, "make_plan needs a recipe with a deployment"
    if hosts is not None and len(hosts) != dep.nodes:
        raise PlanError(f"--hosts: {len(hosts)} address(es) for a deployment of {dep.nodes} node(s)")
    hosts = hosts or (["127.0.0.1"] if dep.nodes == 1 else placeholder_hosts(dep.nodes))
    plan = Plan(recipe, Side(side), hosts, run_dir)
    http_next = dict.fromkeys(range(dep.nodes), dep.worker_port)
    boot_next = dict.fromkeys(range(dep.nodes), dep.bootstrap_port)
    for k, pl in enumerate(recipe.placements()):
        port, http_next[pl.node] = http_next[pl.node], http_next[pl.node] + 1
        boot = None
        if pl.role == "prefill":
            boot, boot_next[pl.node] = boot_next[pl.node], boot_next[pl.node] + 1
        plan.endpoints.append(Endpoint(f"http://{hosts[pl.node]}:{port}", pl.role, boot))
        for rank in range(pl.nodes):
            extra = layout_args(recipe, pl, rank, hosts, dist_port=dep.dist_init_port + k, bootstrap=boot)
            reports = report_dir or run_dir / "reports" / pl.name / f"node{rank}"
            plan.parts.append(part(recipe, pl, rank, hosts, port, extra, side, run_dir, model_path, reports))
    plan.router = router_spec(dep.router, plan.endpoints, host=router_host, port=router_port, metrics_port=metrics_port)
    plan.router_url = f"http://{'127.0.0.1' if router_host in ('0.0.0.0', '::') else router_host}:{router_port}"
    return plan


def layout_args(
    recipe: Recipe, pl: Placement, rank: int, hosts: list[str], *, dist_port: int, bootstrap: int | None
) -> list[str]:
    """The flags of the instance's place in the layout (on top of its worker group's server flags)."""
    dep = recipe.deployment
    args: list[str] = []
    if pl.nodes > 1:
        head = f"{hosts[pl.node]}:{dist_port}"  # the instance's first node runs torch.distributed's store
        args += ["--nnodes", str(pl.nodes), "--node-rank", str(rank), "--dist-init-addr", head]
    if pl.base_gpu:
        args += ["--base-gpu-id", str(pl.base_gpu)]
    if pl.role != "mixed":
        args += ["--disaggregation-mode", pl.role, "--disaggregation-transfer-backend", dep.transfer_backend]
        if bootstrap is not None:
            args += ["--disaggregation-bootstrap-port", str(bootstrap)]
        if dep.ib_device:
            args += ["--disaggregation-ib-device", dep.ib_device]
    return args


def part(
    recipe: Recipe,
    pl: Placement,
    rank: int,
    hosts: list[str],
    port: int,
    extra: list[str],
    side: Side,
    run_dir: Path,
    model_path: str,
    report_dir: Path,
) -> Part:
    group = recipe.deployment.workers[pl.group]
    node = pl.node + rank
    # the group's server (recipe server + its changes) as the recipe's: build() then adds overlays.server as usual
    as_single = recipe.model_copy(
        update={"server": recipe.group_server(pl.group, baseline=True), "env": recipe.env | group.env}
    )
    spec = build(as_single, side=side, port=port, host=hosts[node], model_path=model_path, report_dir=report_dir)
    spec.argv += extra
    spec.side = f"{spec.side} {pl.name}" + (f" (node rank {rank})" if pl.nodes > 1 else "")
    log = run_dir / "logs" / f"{pl.name}-node{rank}.log"
    return Part(pl, node, rank, hosts[pl.node], port, spec, log, report_dir)


def describe(p: Part) -> str:
    """One comment line: which instance, its parallelism, GPUs, where it serves."""
    s = p.spec
    pl = p.placement
    flags = dict(zip(s.argv, s.argv[1:], strict=False))
    sizes = (("tp", "--tp-size"), ("dp", "--dp-size"), ("ep", "--ep-size"))
    par = ", ".join(f"{k} {flags[f]}" for k, f in sizes if f in flags)
    par = (par or "tp 1") + (", dp-attention" if "--enable-dp-attention" in s.argv else "")
    gpus = f"GPUs {pl.base_gpu}-{pl.base_gpu + pl.gpus - 1}" if pl.gpus > 1 else f"GPU {pl.base_gpu}"
    where = f"serves {p.url}" if p.serves_http else f"ranks of {p.placement.name}, served from node {pl.node}"
    return f"# {pl.name} ({pl.role}; {par}; {gpus}; {where})"


def dry_run_text(plan: Plan, node: int | None = None) -> str:
    """What `speedrun launch RECIPE --dry-run` prints for a deployment: per node, each part's command line with its
    environment, and the router's on node 0. `node`: that node only."""
    r, dep = plan.recipe, plan.recipe.deployment
    lines = [
        f"# {plan.side} side of {r.name}: {dep.nodes} node(s) x {r.hardware.gpus} GPUs, "
        f"{len(plan.serving())} server instance(s), SGLang's router on node 0"
    ]
    if plan.hosts == placeholder_hosts(dep.nodes):
        names = ", ".join(plan.hosts)
        lines.append(f"# {names}: the nodes' addresses; `--hosts ADDR0,ADDR1,...` fills them in")
    for n in range(dep.nodes) if node is None else [node]:
        lines.append(f"## node {n} ({plan.hosts[n]}): speedrun launch {r.name} --node-rank {n}")
        for p in plan.on_node(n):
            lines += [describe(p), p.spec.shell()]
        if n == 0 and plan.router is not None:
            lines += ["# router: started once every server instance is healthy", shlex.join(plan.router.argv)]
    return "\n".join(lines)
