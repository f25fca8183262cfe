"""Recipe -> the exact `python -m sglang.launch_server ...` argv and environment, for one side.

The plugin's settings travel as one validated object (overlays/environ.py PluginSettings, `settings_for`) in
SPEEDRUN_SETTINGS. The overlay side turns the plugin on (its ops and their options) and applies
`overlays.server`; the baseline side runs stock SGLang with the same model and flags. Synthetic models get sane
weights on both sides (synthetic_fill, same seed) so the two sides compute on the same numbers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from speedrun.overlays.environ import PluginSettings
from speedrun.recipe import Recipe, Server, Side

# Set on the multi-GPU hosts we borrow: NVLink multicast can take a shared host's GPUs down. Keep it off in
# every environment we build, whatever the caller's environment says.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

FLAGS: dict[str, str] = {  # Server field -> sglang.launch_server flag (value flags)
    "tp": "--tp-size",
    "ep": "--ep-size",
    "dp": "--dp-size",
    "kv_cache_dtype": "--kv-cache-dtype",
    "mem_fraction_static": "--mem-fraction-static",
    "chunked_prefill_size": "--chunked-prefill-size",
    "max_prefill_tokens": "--max-prefill-tokens",
    "max_running_requests": "--max-running-requests",
    "cuda_graph_max_bs": "--cuda-graph-max-bs",
    "attention_backend": "--attention-backend",
    "decode_attention_backend": "--decode-attention-backend",
    "prefill_attention_backend": "--prefill-attention-backend",
    "moe_runner_backend": "--moe-runner-backend",
    "page_size": "--page-size",
    "context_length": "--context-length",
    "num_continuous_decode_steps": "--num-continuous-decode-steps",
    "load_format": "--load-format",
}
DEFAULTS = {"load_format": "auto", "kv_cache_dtype": "auto", "tp": 1, "ep": 1, "dp": 1}  # not passed
SWITCHES = {
    "dp_attention": "--enable-dp-attention",
    "disable_radix_cache": "--disable-radix-cache",
    "trust_remote_code": "--trust-remote-code",
}


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]  # only what we set on top of the caller's environment
    side: str  # a Side; "router" for a deployment's router

    def shell(self) -> str:
        """One copy-pasteable line."""
        import shlex

        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{envs} {shlex.join(self.argv)}".strip()


def server_args(server: Server) -> list[str]:
    args: list[str] = []
    for field, flag in FLAGS.items():
        value = getattr(server, field)
        if value is None or value == DEFAULTS.get(field):
            continue
        args += [flag, str(value)]
    args += [flag for field, flag in SWITCHES.items() if getattr(server, field)]
    if server.speculative:
        s = server.speculative
        args += [
            "--speculative-algorithm",
            s.algorithm,
            "--speculative-num-steps",
            str(s.num_steps),
            "--speculative-eagle-topk",
            str(s.eagle_topk),
            "--speculative-num-draft-tokens",
            str(s.num_draft_tokens),
        ]
    return args + list(server.extra_args)


def build(
    recipe: Recipe,
    *,
    side: Side,
    port: int,
    host: str = "127.0.0.1",
    model_path: str | None = None,
    report_dir: Path | None = None,
    python: str | None = None,
    concurrency: int | None = None,
) -> LaunchSpec:
    """The launch of one side. `model_path` overrides recipe.model.path (e.g. a generated synthetic folder);
    `concurrency` picks the recipe's `server_by_concurrency` bucket (None: `server` as it is)."""
    side = Side(side)
    if concurrency is not None:
        recipe = recipe.at_concurrency(concurrency)
    server = recipe.server_for(side.stock)
    model = recipe.model_for(side.stock)
    argv = [
        python or sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model_path or model.path,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if model.revision:
        argv += ["--revision", model.revision]
    if model.tokenizer:
        argv += ["--tokenizer-path", model.tokenizer]
    argv += server_args(server)

    settings = settings_for(recipe, side, report_dir)
    env = {**recipe.env, **NO_MULTICAST, **settings.env()}
    if side.stock and not settings.synthetic_fill:
        env["SGLANG_PLUGINS"] = "none"  # stock SGLang: our plugin is not even imported
    return LaunchSpec(argv=argv, env=env, side=side)


def settings_for(recipe: Recipe, side: Side, report_dir: Path | None = None) -> PluginSettings:
    """The plugin's settings for one side: the overlay side's ops with their recipe options (a stock side: none);
    the synthetic filler and its seed on both sides, as the side's model asks; where the reports go."""
    side = Side(side)
    o = recipe.overlays
    ops = [] if side.stock else o.enabled_ops()
    synth = recipe.model_for(side.stock).synthetic
    fill = bool(synth and synth.fill)
    return PluginSettings(
        ops=tuple(ops),
        backends={op: getattr(o, op).backend for op in ops},
        mla_decode_compute=o.mla_decode.compute if "mla_decode" in ops else None,
        mla_decode_kv_store=o.mla_decode.kv_store if "mla_decode" in ops else "fused",
        mxfp4_moe_layout=o.mxfp4_moe.layout if "mxfp4_moe" in ops else None,
        mxfp4_moe_stock_fp8=o.mxfp4_moe.stock_fp8 if "mxfp4_moe" in ops else "per_call",
        mxfp4_gemm_stock_fp8=o.mxfp4_gemm.stock_fp8 if "mxfp4_gemm" in ops else "per_call",
        mxfp4_gemm_aiter_kernel=o.mxfp4_gemm.aiter_kernel,
        synthetic_fill=fill,
        seed=synth.seed if synth and fill else 0,
        report_dir=report_dir,
    )


def merged_env(spec: LaunchSpec) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.env)
    return env
