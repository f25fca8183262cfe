"""SGLang's router (the `sglang-router` package, `python -m sglang_router.launch_router`, as SGLang 0.5.17's own
PD tests and docs start it): recipe + worker URLs -> its command, and what it says about its workers."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

from speedrun.launch.command import LaunchSpec
from speedrun.recipe import RouterSettings

MODULE = "sglang_router.launch_router"


@dataclass(frozen=True)
class Endpoint:
    """One server instance as the router sees it: its HTTP URL, its role, a prefill server's bootstrap port."""

    url: str
    role: str  # mixed | prefill | decode
    bootstrap_port: int | None = None


def router_spec(
    settings: RouterSettings,
    endpoints: list[Endpoint],
    *,
    host: str,
    port: int,
    metrics_port: int | None = None,
    python: str | None = None,
) -> LaunchSpec:
    """The router's command: regular mode (`--worker-urls`) or PD mode (`--pd-disaggregation --prefill URL PORT
    --decode URL`), the recipe's policy, and a short health-check interval so a dead worker is marked quickly."""
    argv = [python or sys.executable, "-m", MODULE, "--host", host, "--port", str(port)]
    argv += ["--policy", settings.policy]
    pd = any(e.role != "mixed" for e in endpoints)
    if pd:
        argv.append("--pd-disaggregation")
        for e in endpoints:
            if e.role == "prefill":
                argv += ["--prefill", e.url, str(e.bootstrap_port) if e.bootstrap_port else "none"]
        for e in endpoints:
            if e.role == "decode":
                argv += ["--decode", e.url]
        if settings.prefill_policy:
            argv += ["--prefill-policy", settings.prefill_policy]
        if settings.decode_policy:
            argv += ["--decode-policy", settings.decode_policy]
    else:
        argv += ["--worker-urls", *(e.url for e in endpoints)]
    argv += ["--health-check-interval-secs", str(settings.health_check_interval_s)]
    if metrics_port is not None:  # its Prometheus exporter binds 29000 by default: two routers on one host collide
        argv += ["--prometheus-host", host, "--prometheus-port", str(metrics_port)]
    return LaunchSpec(argv=argv + list(settings.extra_args), env={}, side="router")


def free_port_except(taken: set[int]) -> int:
    """A free port that is none of `taken` (ports chosen but not bound yet: the router's, the servers')."""
    from speedrun.launch.server import free_port

    port = free_port()
    while port in taken:
        port = free_port()
    return port


def router_workers(url: str, timeout: float = 5.0) -> list[dict] | None:
    """The router's worker list (GET /workers: url, worker_type, is_healthy, ...); None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/workers", timeout=timeout) as r:
            data = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    workers = data.get("workers") if isinstance(data, dict) else None
    return workers if isinstance(workers, list) else None
