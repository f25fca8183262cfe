"""Recipe schema: one YAML file describes a model, the hardware, the server flags, the overlays, the
benchmark scenarios and the accuracy gates. Validated with pydantic; every error names the file, the field
path and what was expected."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from speedrun.overlays import environ
from speedrun.overlays.mla_decode.sglang_hook import NAME as MLA_BACKEND
from speedrun.overlays.ops import OPS, Backend

# recipes/ is the package speedrun.recipes: found the same way in a wheel and in an editable install
RECIPES_DIR = Path(str(files("speedrun.recipes")))


class Side(StrEnum):
    """Which server a launch or a measurement is: the one spelling of a side (results files, folders, labels)."""

    BASELINE = "baseline"  # stock SGLang, overlays off
    CONTROL = "control"  # a second stock configuration: the agreement yardstick (accuracy.agreement.control)
    OVERLAY = "overlay"  # SGLang with the recipe's overlays

    @property
    def stock(self) -> bool:
        """Stock SGLang (the baseline's model and server settings, our plugin not loaded)."""
        return self is not Side.OVERLAY


def _no_plugin_settings(env: dict[str, str]) -> dict[str, str]:
    """The plugin's settings come from the recipe's fields, passed whole as SPEEDRUN_SETTINGS by the launcher: a
    loose SPEEDRUN_* variable beside them would conflict (the plugin refuses both)."""
    bad = [k for k in env if k == environ.SETTINGS or k in environ.VARS]
    if bad:
        raise ValueError(f"{bad[0]} is a plugin setting: set it with the recipe's overlays / model.synthetic fields")
    return env


Env = Annotated[dict[str, str], AfterValidator(_no_plugin_settings)]  # extra environment of a server


class Strict(BaseModel):
    # strict: YAML's `true` is no GPU count and `2.0` no concurrency; no silent coercion of a typo
    model_config = ConfigDict(extra="forbid", strict=True)


class Synthetic(Strict):
    """A model folder generated locally (config.json + a locally trained tokenizer), served with dummy weights."""

    arch: Literal["deepseek_v3", "gpt_oss"]
    overrides: dict[str, Any] = Field(default_factory=dict, description="config.json keys to override")
    quantization: Literal["quark_mxfp4", "fp8_block", "mxfp4", "bf16"] = "bf16"
    fill: bool = Field(True, description="fill dummy weights sanely (MXFP4 bytes/scales too), same seed everywhere")
    seed: int = 0
    vocab_size: int = Field(8192, ge=256, description="size of the locally trained tokenizer")


class Model(Strict):
    path: str = Field(..., description="HF id or local folder; for synthetic models, the folder name to generate")
    revision: str | None = None
    tokenizer: str | None = None
    synthetic: Synthetic | None = None


class Hardware(Strict):
    platform: Literal["cuda", "rocm"]
    arch: Literal["sm90", "gfx950"]
    gpus: int = Field(1, ge=1, le=64)


class Speculative(Strict):
    algorithm: Literal["EAGLE", "EAGLE3", "NEXTN"]
    num_steps: int = 3
    eagle_topk: int = 1
    num_draft_tokens: int = 4


class Server(Strict):
    tp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    dp_attention: bool = False
    dp: int = Field(1, ge=1)
    kv_cache_dtype: Literal["auto", "bf16", "fp8_e4m3", "fp8_e5m2"] = "auto"
    mem_fraction_static: float | None = Field(None, gt=0, lt=1)
    chunked_prefill_size: int | None = None
    max_prefill_tokens: int | None = None
    max_running_requests: int | None = None
    cuda_graph_max_bs: int | None = None
    attention_backend: str | None = None
    decode_attention_backend: str | None = None
    prefill_attention_backend: str | None = None
    moe_runner_backend: str | None = None
    page_size: int | None = None
    disable_radix_cache: bool = False
    context_length: int | None = None
    num_continuous_decode_steps: int | None = Field(None, ge=1)
    load_format: Literal["auto", "dummy", "safetensors"] = "auto"
    trust_remote_code: bool = False
    speculative: Speculative | None = None
    extra_args: list[str] = Field(default_factory=list, description="passed verbatim to sglang.launch_server")


def merged_server(base: Server, fields: dict[str, Any], where: str) -> Server:
    """`base` with partial overrides, validated; a bad value is one ValueError naming `where` and the field."""
    try:
        return Server.model_validate(base.model_dump() | fields)
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}: {bad}") from None


def check_server_keys(fields: dict[str, Any], where: str) -> None:
    """Partial Server overrides (a dict, so unset fields stay the recipe's) must still name real fields."""
    unknown = sorted(set(fields) - set(Server.model_fields))
    if unknown:
        raise ValueError(f"{where} has unknown server field(s) {unknown}")


class OverlayOp(Strict):
    enabled: bool = True
    backend: Backend = "triton"


class MLADecodeOp(OverlayOp):
    """overlays.mla_decode: an OverlayOp plus how an fp8 KV cache is computed and written (only this op takes
    them)."""

    compute: environ.MlaCompute | None = Field(
        None,
        description="fp8 KV caches: a8w8 = q quantized to fp8 on the fly, fp8 MMAs (the finals' aiter reference); "
        "a16 = the cache upcast to 16 bits. Unset: each config bucket's fp8_compute (shipped: sm90 a16, gfx950 a8w8)",
    )
    kv_store: environ.MlaKvStore = Field(
        "fused", description=environ.PluginSettings.model_fields["mla_decode_kv_store"].description
    )


class MoeOp(OverlayOp):
    """overlays.mxfp4_moe: an OverlayOp plus the layout the expert values are stored in and how the large-M route
    (CUDA) gets its FP8 experts."""

    layout: environ.MoeLayout | None = Field(
        None, description="swz (mx.layout swz128) or plain; unset: swz on CUDA, plain on ROCm"
    )
    stock_fp8: environ.StockFp8 = Field(
        "per_call", description=environ.PluginSettings.model_fields["mxfp4_moe_stock_fp8"].description
    )


class GemmOp(OverlayOp):
    """overlays.mxfp4_gemm: an OverlayOp plus the aiter kernel its `backend: aiter` calls (ROCm) and how the
    large-M route (CUDA) gets its FP8 weights."""

    aiter_kernel: environ.AiterGemmKernel = Field(
        "a4w4", description="a4w4: aiter's gemm_a4w4 on preshuffled operands; afp4wfp4: its Triton GEMM, as stock"
    )
    stock_fp8: environ.GemmStockFp8 = Field(
        "per_call", description=environ.PluginSettings.model_fields["mxfp4_gemm_stock_fp8"].description
    )


class Overlays(Strict):
    mla_decode: MLADecodeOp = Field(default_factory=lambda: MLADecodeOp(enabled=False))
    mxfp4_moe: MoeOp = Field(default_factory=lambda: MoeOp(enabled=False))
    mxfp4_gemm: GemmOp = Field(default_factory=lambda: GemmOp(enabled=False))
    server: dict[str, Any] = Field(
        default_factory=dict, description="Server fields that differ with overlays on (e.g. attention_backend)"
    )

    def enabled_ops(self) -> list[str]:
        return [op for op in OPS if getattr(self, op).enabled]

    def only(self, ops: Sequence[str]) -> Overlays:
        """These overlays with only `ops` left on (an ablation: what each op adds). Server fields that name the MLA
        overlay's backend leave with it, so without mla_decode the overlay side attends as the baseline does.
        ValueError naming an op that is not enabled here, or when none is left."""
        enabled = self.enabled_ops()
        if not ops:
            raise ValueError(f"name at least one of the enabled overlays ({', '.join(enabled)})")
        for op in ops:
            if op not in enabled:
                raise ValueError(f"{op!r} is not one of the enabled overlays ({', '.join(enabled)})")
        off = {op: getattr(self, op).model_copy(update={"enabled": False}) for op in enabled if op not in ops}
        server = self.server
        if "mla_decode" in off:
            server = {k: v for k, v in server.items() if v != MLA_BACKEND}
        return self.model_copy(update={**off, "server": server})

    @model_validator(mode="after")
    def _server_keys_exist(self) -> Overlays:
        check_server_keys(self.server, "overlays.server")
        return self


class Scenario(Strict):
    isl: int = Field(..., ge=1)
    osl: int = Field(..., ge=1)
    concurrency: list[PositiveInt] = Field(..., min_length=1)
    prompts_per_concurrency: int = Field(10, ge=1, description="prompts = this x concurrency (finals: 10)")
    warmup_per_concurrency: int = Field(2, ge=0, description="warm-up requests = this x concurrency (finals: 2)")
    range_ratio: float = Field(1.0, gt=0, le=1)
    request_rate: float = Field(float("inf"), gt=0, description="requests/s (inf: all at once)")
    ignore_eos: bool = True


class Benchmarks(Strict):
    scenarios: list[Scenario] = Field(
        default_factory=lambda: [Scenario(isl=8192, osl=1024, concurrency=[4, 32, 128])],
        description="default: the finals method, ISL 8192 / OSL 1024 at concurrency 4, 32, 128",
    )
    timeout_s: float = Field(1800, gt=0, description="per scenario")


class Gsm8k(Strict):
    shots: int = Field(3, ge=0)
    questions: int | None = Field(None, ge=1, description="None = all 1319")
    min_score: float = Field(..., ge=0, le=1)
    concurrency: int = 64
    data: str | None = Field(None, description="folder with test.jsonl/train.jsonl (default: $SPEEDRUN_GSM8K_DIR)")
    max_tokens: int = 512


class Control(Strict):
    """A second stock configuration (e.g. another attention or MoE backend): how much stock SGLang disagrees
    with itself on this model, the yardstick for the `calibrated` agreement gate."""

    label: str = Field(..., description="what differs, for the report (e.g. 'flashinfer MLA')")
    server: dict[str, Any] = Field(..., min_length=1, description="Server fields that differ from the baseline")
    env: Env = Field(default_factory=dict)

    @model_validator(mode="after")
    def _server_keys_exist(self) -> Control:
        check_server_keys(self.server, "control.server")
        return self


class Agreement(Strict):
    prompts: int = Field(16, ge=1)
    prompt_len: int = Field(64, ge=1)
    tokens: int = Field(32, ge=1, description="greedy tokens compared per prompt")
    min_token_match: float = Field(0.9, ge=0, le=1)
    max_logprob_diff: float = Field(0.5, gt=0, description="max |logprob(overlay) - logprob(baseline)|")
    mean_logprob_diff: float = Field(0.05, gt=0)
    top_logprobs: int = Field(5, ge=0, le=20, description="top-k logprobs kept per step (divergence margins)")
    tie_margin: float = Field(0.25, gt=0, description="a divergence within this many nats is a near tie")
    control: Control | None = None
    gate: Literal["absolute", "calibrated"] = Field(
        "absolute", description="absolute: the limits above; calibrated: judged against the control's numbers"
    )
    match_slack: float = Field(0.15, ge=0, le=1, description="calibrated: match >= control's match - this")
    noise_factor: float = Field(2.0, ge=1, description="calibrated: mean |dlogp| <= this x the control's")

    @model_validator(mode="after")
    def _calibrated_needs_control(self) -> Agreement:
        if self.gate == "calibrated" and self.control is None:
            raise ValueError("gate 'calibrated' needs a `control` (a second stock configuration to compare with)")
        return self


class Accuracy(Strict):
    gsm8k: Gsm8k | None = None
    agreement: Agreement | None = None


class ConcurrencyBucket(Strict):
    """Server fields for the cases above a concurrency (e.g. the finals' smaller prefill chunk above 32)."""

    concurrency_above: int = Field(..., ge=0, description="applies to cases with concurrency > this")
    server: dict[str, Any] = Field(..., description="Server fields that differ in this bucket")

    @model_validator(mode="after")
    def _server_keys_exist(self) -> ConcurrencyBucket:
        check_server_keys(self.server, f"server_by_concurrency[concurrency_above={self.concurrency_above}].server")
        return self


class BaselineCandidate(Strict):
    """One stock configuration `speedrun baseline` serves and probes: Server fields on top of the recipe's."""

    label: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$", description="names its folder and row")
    server: dict[str, Any] = Field(default_factory=dict)
    env: Env = Field(default_factory=dict)
    requires: list[str] = Field(
        default_factory=list, description="Python modules the serving host must import, else skipped (reported)"
    )

    @model_validator(mode="after")
    def _server_keys_exist(self) -> BaselineCandidate:
        if self.label in ("recipe", "overlay"):  # the recipe's own row; the overlay side's name
            raise ValueError(f"baseline candidate label {self.label!r} is reserved")
        check_server_keys(self.server, f"baseline candidate {self.label!r} server")
        return self


class BaselineProbe(Strict):
    """The short decode-heavy run each candidate gets (unset: from the recipe's first scenario)."""

    isl: int | None = Field(None, ge=1)
    osl: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1, description="unset: the middle of the recipe's concurrencies")
    prompts_per_concurrency: int = Field(2, ge=1)
    warmup_per_concurrency: int = Field(1, ge=0)
    timeout_s: float = Field(900, gt=0, description="bound on one candidate's warm-up, and again on its probe run")
    startup_timeout_s: float = Field(1200, gt=0, description="bound on one candidate's server start")


class BaselineSearch(Strict):
    """Which stock configurations `speedrun baseline` tries (default: the card's, see speedrun/eval/baseline.py)."""

    candidates: list[BaselineCandidate] | None = Field(
        None, description="replaces the card's default attention candidates"
    )
    extra_candidates: list[BaselineCandidate] = Field(default_factory=list, description="added to the list")
    exclude: list[str] = Field(default_factory=list, description="labels dropped from the list")
    moe_runner_backends: list[str] | None = Field(
        None, description="tried on the fastest attention candidate; unset: the card's defaults for the model"
    )
    probe: BaselineProbe = Field(default_factory=BaselineProbe)

    @model_validator(mode="after")
    def _unique_labels(self) -> BaselineSearch:
        labels = [c.label for c in (self.candidates or []) + self.extra_candidates]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"baseline candidates: duplicate label(s) {dup}")
        return self


# ---------------------------------------------------------------- deployment (scale-out, issue 23)
WorkerRole = Literal["mixed", "prefill", "decode"]
RouterPolicy = Literal["cache_aware", "round_robin", "random", "power_of_two"]
# the real transfer engines of SGLang 0.5.17's --disaggregation-transfer-backend (tests check them against its
# source); mori is AMD's (ROCm), the others run on both platforms
TransferBackend = Literal["mooncake", "mooncake_tcp", "nixl", "mori"]


class Workers(Strict):
    """One group of identical SGLang servers ("instances") of one role, each registered with the router.
    `hardware.gpus` is the GPUs of one node; `server` (tp, ep, dp, dp_attention, ...) is the recipe's `server`
    with this group's changes on top."""

    role: WorkerRole = Field("mixed", description="mixed: prefill + decode in one server; else PD disaggregated")
    replicas: int = Field(1, ge=1, description="server instances of this group (data-parallel replicas)")
    nodes: int = Field(1, ge=1, le=64, description="nodes per instance (SGLang --nnodes); >1 fills its nodes")
    server: dict[str, Any] = Field(default_factory=dict, description="Server fields that differ for this group")
    env: Env = Field(default_factory=dict)

    @model_validator(mode="after")
    def _server_keys_exist(self) -> Workers:
        check_server_keys(self.server, "server")
        return self


class RouterSettings(Strict):
    """SGLang's router (`python -m sglang_router.launch_router`), started on the head node."""

    policy: RouterPolicy = "cache_aware"
    prefill_policy: RouterPolicy | None = Field(None, description="PD only: policy among prefill servers")
    decode_policy: RouterPolicy | None = Field(None, description="PD only: policy among decode servers")
    health_check_interval_s: int = Field(10, ge=1, description="how soon a dead worker is marked unhealthy")
    extra_args: list[str] = Field(default_factory=list, description="passed verbatim to the router")


class Deployment(Strict):
    """How the servers are laid out over nodes: worker groups (roles, replicas, nodes per instance), the router,
    and for prefill/decode disaggregation the KV transfer engine. Instances fill nodes in the order listed."""

    nodes: int = Field(..., ge=1, le=256, description="nodes in all: must be what the worker groups need")
    workers: list[Workers] = Field(..., min_length=1)
    router: RouterSettings = Field(default_factory=RouterSettings)
    transfer_backend: TransferBackend | None = Field(None, description="PD only: KV transfer engine")
    ib_device: str | None = Field(None, description="PD only: RDMA device(s) (--disaggregation-ib-device)")
    worker_port: int = Field(30010, ge=1024, le=65000, description="HTTP port of a node's first instance (+1 each)")
    bootstrap_port: int = Field(8998, ge=1024, le=65000, description="PD: a node's first prefill bootstrap port")
    dist_init_port: int = Field(25000, ge=1024, le=65000, description="multi-node: torch.distributed init port")

    @property
    def disaggregated(self) -> bool:
        return any(w.role != "mixed" for w in self.workers)

    @model_validator(mode="after")
    def _roles(self) -> Deployment:
        roles = {w.role for w in self.workers}
        if self.disaggregated:
            if roles != {"prefill", "decode"}:
                got = ", ".join(sorted(roles))
                raise ValueError(f"deployment.workers: PD disaggregation needs prefill and decode groups only ({got})")
            if self.transfer_backend is None:
                raise ValueError("deployment.transfer_backend: required with prefill/decode workers (ROCm: mori)")
        elif self.transfer_backend or self.ib_device or self.router.prefill_policy or self.router.decode_policy:
            raise ValueError(
                "deployment: transfer_backend, ib_device and router prefill/decode policies need prefill/decode workers"
            )
        return self


@dataclass(frozen=True)
class Placement:
    """Where one server instance runs: its name, group, role, first node, node count, first GPU and GPUs per node."""

    name: str  # role-k, k counting the instances of that role: "prefill-0", "decode-1", "mixed-7"
    group: int  # index in deployment.workers (-1: a recipe without a deployment)
    role: str
    node: int  # first node (its rank-0 process serves HTTP there)
    nodes: int
    base_gpu: int
    gpus: int  # GPUs per node it uses


def instance_gpus(server: Server) -> int:
    """GPUs one SGLang server uses: TP ranks, times DP copies unless DP attention shares them."""
    return server.tp * (1 if server.dp_attention else server.dp)


class Recipe(Strict):
    name: str
    description: str = ""
    model: Model
    baseline_model: Model | None = Field(
        None, description="what the baseline serves when stock SGLang cannot run `model` (quark MXFP4 on CUDA)"
    )
    hardware: Hardware
    server: Server = Field(default_factory=Server)
    env: Env = Field(default_factory=dict)
    overlays: Overlays = Field(default_factory=Overlays)
    benchmarks: Benchmarks = Field(default_factory=Benchmarks)
    accuracy: Accuracy = Field(default_factory=Accuracy)
    server_by_concurrency: list[ConcurrencyBucket] = Field(
        default_factory=list,
        description="a case at concurrency c runs on a server with the fields of the bucket with the largest "
        "concurrency_above < c on top of `server` (no such bucket: `server` as it is); one server per distinct setting",
    )
    baseline: BaselineSearch = Field(default_factory=BaselineSearch)

    @model_validator(mode="after")
    def _buckets_distinct(self) -> Recipe:
        bounds = [b.concurrency_above for b in self.server_by_concurrency]
        if len(set(bounds)) != len(bounds):
            raise ValueError(f"server_by_concurrency: concurrency_above values must be distinct, got {bounds}")
        for b in self.server_by_concurrency:
            merged_server(self.server, b.server, f"server_by_concurrency[concurrency_above={b.concurrency_above}]")
        for c in (self.baseline.candidates or []) + self.baseline.extra_candidates:
            merged_server(self.server, c.server, f"baseline candidate {c.label!r}")
        return self

    def bucket_for(self, concurrency: int) -> ConcurrencyBucket | None:
        """The bucket a case at `concurrency` runs in: the largest `concurrency_above` below it."""
        below = [b for b in self.server_by_concurrency if b.concurrency_above < concurrency]
        return max(below, key=lambda b: b.concurrency_above, default=None)

    def at_concurrency(self, concurrency: int | None) -> Recipe:
        """The recipe as one server runs it at `concurrency`: the bucket's fields folded into `server`
        (None: `server` as it is); the result has no buckets left."""
        bucket = self.bucket_for(concurrency) if concurrency is not None else None
        server = self.server
        if bucket is not None and bucket.server:
            server = merged_server(self.server, bucket.server, f"concurrency_above={bucket.concurrency_above}")
        return self.model_copy(update={"server": server, "server_by_concurrency": []})

    deployment: Deployment | None = Field(None, description="scale-out: nodes, replicas, roles, router")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        used = self.server.tp * (1 if self.server.dp_attention else self.server.dp)
        if self.deployment is not None:
            used = 0  # each worker group is checked against the nodes it spans (_deployment_fits)
        elif used > self.hardware.gpus:
            raise ValueError(f"server.tp x server.dp = {used} GPUs > hardware.gpus = {self.hardware.gpus}")
        if used and self.hardware.gpus % used:  # e.g. TP3 on 8 GPUs: SGLang's ranks would not tile the machine
            what = "server.tp" if used == self.server.tp else "server.tp x server.dp"
            raise ValueError(f"{what} = {used} does not divide hardware.gpus = {self.hardware.gpus}")
        for m in (self.model, self.baseline_model):
            if m and m.synthetic and self.server.load_format != "dummy":
                raise ValueError("model.synthetic needs server.load_format: dummy")
        return self

    @model_validator(mode="after")
    def _mla_compute_needs_fp8_kv(self) -> Recipe:
        mla = self.overlays.mla_decode
        kv = self.server_for(False).kv_cache_dtype
        if mla.enabled and mla.compute == "a8w8" and kv != "fp8_e4m3":
            raise ValueError(f"overlays.mla_decode.compute a8w8 needs server.kv_cache_dtype fp8_e4m3 (got {kv!r})")
        return self

    def with_ops(self, ops: Sequence[str]) -> Recipe:
        """The recipe with only `ops` of its overlays on (Overlays.only; ValueError as there)."""
        return self.model_copy(update={"overlays": self.overlays.only(ops)})

    def model_for(self, baseline: bool) -> Model:
        return self.baseline_model if baseline and self.baseline_model else self.model

    def server_for(self, baseline: bool) -> Server:
        """Server settings of one side: the overlay side applies `overlays.server` on top."""
        if baseline or not self.overlays.server:
            return self.server
        return self.server.model_copy(update=self.overlays.server)

    @model_validator(mode="after")
    def _deployment_fits(self) -> Recipe:
        if self.deployment is not None:
            check_deployment(self)
        return self

    def group_server(self, group: int, baseline: bool) -> Server:
        """A worker group's server settings on one side: the recipe's, the group's changes, then (overlay side)
        `overlays.server`."""
        base = self.server.model_copy(update=self.deployment.workers[group].server) if self.deployment else self.server
        return base if baseline or not self.overlays.server else base.model_copy(update=self.overlays.server)

    def placements(self) -> list[Placement]:
        """Every server instance of the deployment and where it runs (one instance without a deployment)."""
        if self.deployment is None:
            return [Placement("server", -1, "mixed", 0, 1, 0, instance_gpus(self.server))]
        return place(self)

    @property
    def total_gpus(self) -> int:
        """GPUs the recipe serves on: hardware.gpus per node times the deployment's nodes."""
        return self.hardware.gpus * (self.deployment.nodes if self.deployment else 1)


def check_deployment(r: Recipe) -> None:
    """Each worker group's parallelism against the nodes it spans (both sides), and the node count."""
    assert r.deployment is not None
    if r.deployment.transfer_backend == "mori" and r.hardware.platform != "rocm":
        raise ValueError("deployment.transfer_backend: mori is AMD's transfer engine, for hardware.platform rocm")
    for i, group in enumerate(r.deployment.workers):
        where = f"deployment.workers.{i} ({group.role})"
        try:
            Server.model_validate(r.server.model_dump() | group.server)
        except ValidationError as exc:
            e = exc.errors()[0]
            field = ".".join(map(str, e["loc"]))
            raise ValueError(f"{where}.server.{field}: {e['msg']} (got {e['input']!r})") from None
        sides = {instance_gpus(r.group_server(i, b)) for b in (True, False)}
        if len(sides) > 1:
            raise ValueError(f"{where}: overlays.server changes the GPUs an instance uses ({sorted(sides)})")
        check_group(r.group_server(i, baseline=True), group, r.hardware.gpus, where)
    need = max(p.node + p.nodes for p in place(r))
    if need != r.deployment.nodes:
        raise ValueError(f"deployment.nodes = {r.deployment.nodes}, but the worker groups fill {need} node(s)")


def check_group(s: Server, group: Workers, per_node: int, where: str) -> None:
    """SGLang 0.5.17's own rules (server_args.py) for one instance, said before any GPU is touched."""
    gpus, what = instance_gpus(s), "tp" if s.dp_attention or s.dp == 1 else "tp x dp"
    if s.dp_attention and s.tp % s.dp:
        raise ValueError(f"{where}: dp = {s.dp} must divide tp = {s.tp} with dp_attention")
    if s.tp % s.ep:
        raise ValueError(f"{where}: ep = {s.ep} must divide tp = {s.tp}")
    if group.nodes > 1:
        if s.dp > 1 and not s.dp_attention:
            raise ValueError(f"{where}: dp = {s.dp} over {group.nodes} nodes needs dp_attention (SGLang's rule)")
        if gpus != group.nodes * per_node:
            raise ValueError(
                f"{where}: {what} = {gpus} GPUs, but nodes = {group.nodes} x hardware.gpus = {per_node} is "
                f"{group.nodes * per_node} (a multi-node instance fills its nodes)"
            )
    elif gpus > per_node or per_node % gpus:
        raise ValueError(f"{where}: {what} = {gpus} GPUs must divide hardware.gpus = {per_node} (one node)")


def place(r: Recipe) -> list[Placement]:
    """Instances in the order listed: a multi-node one takes whole fresh nodes, single-node ones pack the GPUs
    left on the current node (e.g. 8 TP1 replicas on one 8-GPU node, or prefill TP4 + decode TP4)."""
    assert r.deployment is not None
    out: list[Placement] = []
    node, used, count = 0, 0, dict.fromkeys(("mixed", "prefill", "decode"), 0)
    for i, group in enumerate(r.deployment.workers):
        gpus = min(instance_gpus(r.group_server(i, baseline=True)), r.hardware.gpus)
        for _ in range(group.replicas):
            if used and (group.nodes > 1 or used + gpus > r.hardware.gpus):
                node, used = node + 1, 0
            name = f"{group.role}-{count[group.role]}"
            count[group.role] += 1
            out.append(Placement(name, i, group.role, node, group.nodes, used, gpus))
            node, used = (node + group.nodes, 0) if group.nodes > 1 else (node, used + gpus)
    return out


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and every bad field."""


def resolve_path(name_or_path: str | Path) -> Path:
    """A path, or a recipe name looked up in recipes/ (with or without .yaml)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for cand in (RECIPES_DIR / f"{name_or_path}.yaml", RECIPES_DIR / str(name_or_path)):
        if cand.exists():
            return cand
    known = ", ".join(sorted(f.stem for f in RECIPES_DIR.glob("*.yaml")))
    raise RecipeError(f"{name_or_path}: no such recipe file (known recipes: {known})")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load keeps the last of two equal keys without a word; in a recipe that hides a mistake. Booleans
    are YAML 1.2's, true and false only: YAML 1.1 also reads on/off/yes/no as booleans, which would turn a value
    such as `stock_fp8: off` into False. A boolean field given yes/no/on/off is then an error naming the field."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:  # before `<<` merges are flattened: a key may override a merged one
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in first:
                raise DuplicateKey(key, key_node.start_mark.line + 1, first[key])
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"line {line}: duplicate key {key!r} (first on line {first_line})")


def read_yaml(path: Path) -> Any:
    """The file's YAML; a folder, non-UTF-8 bytes or bad YAML is a RecipeError of one line."""
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory, expected a recipe YAML file")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start}), expected a recipe YAML file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read it: {exc.strerror}") from None
    except DuplicateKey as exc:
        raise RecipeError(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"{path}: {where}not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = resolve_path(name_or_path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(path, exc)) from None


def format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        shown = err["type"] != "missing" and "input" in err and err["loc"]  # not the whole file for model checks
        got = f" (got {err['input']!r})" if shown else ""
        lines.append(f"  {loc}: {err['msg']}{got}")
    return "\n".join(lines)


def all_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))
