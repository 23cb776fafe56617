"""Which node runs what: teacher SGLang servers, student servers (+ router), the learner.

Pure python (no torch, megatron or sglang import), so ``opd validate`` and the sbatch script
can call it before anything starts:

    plan(cfg, nodes) -> Placement        raises ConfigError naming the key when it does not fit
    format_plan(placement) -> str        the human-readable plan ``opd validate`` prints
    shell_exports(placement) -> str      ``eval``-able OPD_* variables for slurm/opd.sbatch

Nodes are taken in order: the first ``cluster.teacher_nodes`` for teacher servers, then
``cluster.student_nodes`` for student servers, then ``cluster.learner_nodes`` for the learner
(one torchrun per node, MASTER_ADDR = the first learner node). A role with 0 dedicated nodes
shares the learner's. Servers are spread round-robin over their role's nodes and, on GPUs,
take ``tp`` GPUs each; the learner gets the GPUs left on its nodes. Ports are unique per job
(not per node; ``opd_megatron.config.layout``, the engines launcher's layout), so fake nodes
sharing one host (launch/local_slurm.sh) never collide.

The memory check is ``plan.budget``'s estimate from the model's shape
(``plan.flops.model_shape``: HF config.json when readable, else the named shape
``model.flops_name``): server weights per GPU at the server's TP and the KV cache that leaves
in ``mem_fraction`` of the GPU; learner weights, grads, optimizer state, activations and logits
at the microbatch budget per GPU, against 0.9 of it. CPU profiles (gpus_per_node 0) skip GPU
and memory checks.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from opd_megatron.config.layout import server_ports
from opd_megatron.config.schema import Config, EngineRoleConfig
from opd_megatron.errors import ConfigError
from opd_megatron.methods import needs_teacher_servers
from opd_megatron.plan.budget import LEARNER_MEMORY_FRACTION, learner_memory, server_memory
from opd_megatron.plan.flops import lora_params, model_shape, shape_from_hf_config

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "clusters"
"""Cluster profiles shipped with the repo; ``OPD_CLUSTER_DIR`` points elsewhere."""



@dataclass(frozen=True)
class ClusterProfile:
    """Where a run executes (configs/clusters/<name>.yaml); never what it trains."""

    name: str
    partition: Optional[str] = None
    account: Optional[str] = None
    gpus_per_node: int = 0
    gpu_memory_gib: float = 0.0
    """Memory of one GPU, for the plan's memory estimate."""
    gpu_peak_tflops: float = 0.0
    """Dense bf16 peak of one GPU, for the plan's time estimate (0: no time estimate)."""
    container_image: Optional[str] = None
    """Pyxis/enroot image for ``srun --container-image``; None runs on the host."""
    container_mounts: Tuple[str, ...] = ()
    env: Dict[str, str] = field(default_factory=dict)
    """Exported in every process of the job (NCCL settings, caches)."""
    bind_host: str = "127.0.0.1"
    """Address SGLang servers bind to; 0.0.0.0 where other nodes must reach them."""
    srun_args: Tuple[str, ...] = ()
    """Extra flags for every srun (e.g. --mpi=pmix)."""


def load_profile(name: str) -> ClusterProfile:
    """Read a profile by name; unknown names and keys fail naming ``cluster.profile``."""
    root = Path(os.environ.get("OPD_CLUSTER_DIR", PROFILE_DIR))
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        raise ConfigError(f"cluster.profile: no profile {name!r} in {root}; known: {', '.join(known)}")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = set(ClusterProfile.__dataclass_fields__) - {"name"}
    unknown = sorted(set(data) - allowed - {"description"})
    if unknown:
        raise ConfigError(f"cluster.profile: {path} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    data.pop("description", None)
    for key in ("container_mounts", "srun_args"):
        data[key] = tuple(data.get(key) or ())
    data["env"] = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
    return ClusterProfile(name=name, **data)


@dataclass(frozen=True)
class Server:
    role: str
    index: int
    node: str
    port: int
    gpus: Tuple[int, ...]
    """GPU ids on the node (CUDA_VISIBLE_DEVICES); empty on CPU."""

    @property
    def url(self) -> str:
        return f"http://{self.node}:{self.port}"


@dataclass(frozen=True)
class MemoryEstimate:
    what: str
    gib_per_gpu: float
    budget_gib: float


@dataclass(frozen=True)
class Placement:
    nodes: Tuple[str, ...]
    profile: ClusterProfile
    teacher: Tuple[Server, ...]
    """Empty when the teacher runs inside the learner (objective.teacher_backend=megatron)."""
    student: Tuple[Server, ...]
    router: Optional[Server]
    learner_nodes: Tuple[str, ...]
    learner_procs_per_node: int
    learner_gpus: Tuple[int, ...]
    """GPU ids the learner uses on each of its nodes (the same on every node)."""
    master_port: int
    memory: Tuple[MemoryEstimate, ...] = ()

    @property
    def master_addr(self) -> str:
        return self.learner_nodes[0]

    @property
    def student_url(self) -> str:
        """What the loop samples from: the router when there is one, else the servers."""
        return self.router.url if self.router else ",".join(s.url for s in self.student)


def num_params(hf: Dict[str, Any]) -> int:
    """Stored parameters of a dense decoder given its HF config fields (8.19e9 for Qwen3-8B):
    ``ModelShape.total_params``, the count the memory estimate uses."""
    return shape_from_hf_config(hf).total_params


def _check_profile(cfg: Config, profile: ClusterProfile) -> None:
    from opd_megatron.engines.apikey import check_router

    check_router(cfg.engines, profile.bind_host, f"cluster profile {profile.name!r} binds servers to")
    if profile.gpus_per_node != cfg.cluster.gpus_per_node:
        raise ConfigError(f"cluster.gpus_per_node: {cfg.cluster.gpus_per_node} but cluster profile "
                          f"{profile.name!r} has {profile.gpus_per_node} GPUs per node; set "
                          f"cluster.gpus_per_node={profile.gpus_per_node} or choose another cluster.profile")


def _split_nodes(cfg: Config, nodes: Sequence[str]) -> Tuple[List[str], List[str], List[str]]:
    c = cfg.cluster
    needed = c.teacher_nodes + c.student_nodes + c.learner_nodes
    if len(nodes) != needed:
        raise ConfigError(f"cluster.num_nodes: the roles use {needed} nodes (teacher_nodes {c.teacher_nodes} "
                          f"+ student_nodes {c.student_nodes} + learner_nodes {c.learner_nodes}) but the "
                          f"allocation has {len(nodes)} ({' '.join(nodes)}); match sbatch --nodes to them")
    if len(set(nodes)) != len(nodes):
        raise ConfigError(f"cluster.num_nodes: node names repeat in {' '.join(nodes)}")
    teacher = list(nodes[:c.teacher_nodes])
    student = list(nodes[c.teacher_nodes:c.teacher_nodes + c.student_nodes])
    learner = list(nodes[c.teacher_nodes + c.student_nodes:])
    return teacher or learner, student or learner, learner


def _place_servers(role: str, role_cfg: EngineRoleConfig, hosts: List[str], free: Dict[str, List[int]],
                   gpus_per_node: int, ports: Sequence[int]) -> Tuple[Server, ...]:
    """Round-robin over the role's nodes; on GPUs each server takes tp of the node's free GPUs."""
    if gpus_per_node and role_cfg.tp > gpus_per_node:
        raise ConfigError(f"engines.{role}.tp: {role_cfg.tp} exceeds cluster.gpus_per_node ({gpus_per_node}); "
                          f"one server must fit on one node")
    servers = []
    for i in range(role_cfg.num_servers):
        node = hosts[i % len(hosts)]
        gpus: Tuple[int, ...] = ()
        if gpus_per_node:
            if len(free[node]) < role_cfg.tp:
                raise ConfigError(f"engines.{role}.num_servers: {role_cfg.num_servers} servers x tp {role_cfg.tp} "
                                  f"do not fit on {len(hosts)} node(s) x {gpus_per_node} GPUs "
                                  f"({', '.join(hosts)}); lower it or add cluster.{role}_nodes")
            gpus, free[node] = tuple(free[node][:role_cfg.tp]), free[node][role_cfg.tp:]
        servers.append(Server(role, i, node, ports[i], gpus))
    return tuple(servers)


def _learner_layout(cfg: Config, learner: List[str], free: Dict[str, List[int]]) -> Tuple[int, Tuple[int, ...]]:
    p, c = cfg.parallel, cfg.cluster
    world = p.tp * p.pp * p.dp
    if not c.gpus_per_node:
        if world % len(learner):
            raise ConfigError(f"parallel: tp*pp*dp = {world} is not divisible by cluster.learner_nodes "
                              f"({len(learner)}); one torchrun per node needs equal processes per node")
        return world // len(learner), ()
    counts = {n: len(free[n]) for n in learner}
    if len(set(counts.values())) > 1:
        raise ConfigError(f"cluster.learner_nodes: servers leave unequal GPUs on the learner's nodes {counts}; "
                          f"give the servers dedicated nodes (cluster.student_nodes / cluster.teacher_nodes)")
    per_node = counts[learner[0]]
    if world != per_node * len(learner):
        raise ConfigError(f"parallel: tp*pp*dp = {p.tp}*{p.pp}*{p.dp} = {world} must equal the learner's "
                          f"free GPUs ({len(learner)} node(s) x {per_node} after co-located servers)")
    if p.tp > per_node:
        raise ConfigError(f"parallel.tp: {p.tp} exceeds the learner's GPUs per node ({per_node}); "
                          f"keep tensor parallelism inside a node")
    return per_node, tuple(free[learner[0]])


def _server_memory(cfg: Config, role: str, profile: ClusterProfile) -> Optional[MemoryEstimate]:
    role_cfg: EngineRoleConfig = getattr(cfg.engines, role)
    shape = model_shape(getattr(cfg, role), name=role)
    if shape is None:
        return None
    m = server_memory(shape, tp=role_cfg.tp, dtype=role_cfg.dtype, gpu_memory_gib=profile.gpu_memory_gib,
                      mem_fraction=role_cfg.mem_fraction)
    budget = role_cfg.mem_fraction * profile.gpu_memory_gib
    if m.kv_cache <= 0:
        raise ConfigError(f"engines.{role}.tp: {role} weights need ~{m.weights:.1f} GiB per GPU at tp {role_cfg.tp}, "
                          f"over engines.{role}.mem_fraction x {profile.gpu_memory_gib:g} GiB = {budget:.1f} GiB "
                          f"(profile {profile.name}); raise engines.{role}.tp")
    longest = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens)
    if m.kv_tokens < longest:
        raise ConfigError(f"engines.{role}.tp: at tp {role_cfg.tp} the {role}'s KV cache has room for ~{m.kv_tokens} "
                          f"tokens, less than one {longest}-token response (rollout/eval max_new_tokens); "
                          f"raise engines.{role}.tp or engines.{role}.mem_fraction")
    what = (f"{role} server tp{role_cfg.tp}: weights {m.weights:.1f} GiB + KV cache {m.kv_cache:.1f} GiB "
            f"(~{m.kv_tokens} tokens; max_total_tokens {role_cfg.max_total_tokens})")
    return MemoryEstimate(what, m.weights + m.kv_cache, budget)


def _learner_memory(cfg: Config, profile: ClusterProfile) -> Optional[MemoryEstimate]:
    """plan.budget.learner_memory at the recipe's layout, against 0.9 of a GPU."""
    p = cfg.parallel
    shape = model_shape(cfg.student, name="student")
    if shape is None:
        return None
    teacher = model_shape(cfg.teacher, name="teacher") if cfg.objective.teacher_backend == "megatron" else None
    trained = lora_params(shape, cfg.lora.rank, cfg.lora.targets) if cfg.lora.rank else None
    m = learner_memory(shape, tp=p.tp, pp=p.pp, dp=p.dp, microbatch_tokens=p.microbatch_tokens,
                       dtype=cfg.student.dtype, distributed_optimizer=p.distributed_optimizer,
                       trained_params=trained, teacher=teacher, teacher_dtype=cfg.teacher.dtype)
    budget = LEARNER_MEMORY_FRACTION * profile.gpu_memory_gib
    if m.total >= budget:
        # The model state alone over budget is a layout problem; else the microbatch is too big.
        key, fix = (("parallel.tp", "raise parallel.tp/pp or set parallel.distributed_optimizer")
                    if m.total - m.activations - m.logits >= budget else
                    ("parallel.microbatch_tokens", "lower parallel.microbatch_tokens or raise parallel.tp"))
        raise ConfigError(f"{key}: the learner needs ~{m.describe()} per GPU at tp {p.tp} pp {p.pp} dp {p.dp} "
                          f"and {p.microbatch_tokens}-token microbatches, over {LEARNER_MEMORY_FRACTION} x "
                          f"{profile.gpu_memory_gib:g} GiB (profile {profile.name}); {fix}")
    return MemoryEstimate(f"learner tp{p.tp} pp{p.pp} dp{p.dp}: {m.describe()}", m.total, budget)


def _check_weight_sync(cfg: Config, student: Sequence[Server], learner: Sequence[str]) -> None:
    if cfg.engines.weight_sync == "tensor" and any(s.node not in learner for s in student):
        raise ConfigError("engines.weight_sync: 'tensor' needs the student servers on the learner's nodes "
                          "(cluster.student_nodes=0); use disk (shared filesystem) or distributed (NCCL)")


def plan(cfg: Config, nodes: Sequence[str]) -> Placement:
    """Place every role on ``nodes`` (Slurm's node list, in order). Raises ConfigError."""
    profile = load_profile(cfg.cluster.profile)
    _check_profile(cfg, profile)
    gpus_per_node = cfg.cluster.gpus_per_node
    t_hosts, s_hosts, learner = _split_nodes(cfg, nodes)
    free = {n: list(range(gpus_per_node)) for n in nodes}
    e = cfg.engines
    # The engines launcher's ports (config.layout), so a job and a plain `opd run` use the same ones.
    with_teacher = needs_teacher_servers(cfg)
    ports = server_ports(e, teacher_servers=with_teacher)
    student = _place_servers("student", e.student, s_hosts, free, gpus_per_node, ports.student)
    router = None if ports.router is None else Server("router", 0, s_hosts[0], ports.router, ())
    teacher = (_place_servers("teacher", e.teacher, t_hosts, free, gpus_per_node, ports.teacher)
               if with_teacher else ())
    _check_weight_sync(cfg, student, learner)
    per_node, learner_gpus = _learner_layout(cfg, learner, free)
    memory: List[MemoryEstimate] = []
    if gpus_per_node:
        for role in ("teacher",) * bool(teacher) + ("student",):
            est = _server_memory(cfg, role, profile)
            memory += [est] if est else []
        est = _learner_memory(cfg, profile)
        memory += [est] if est else []
    return Placement(tuple(nodes), profile, teacher, student, router, tuple(learner), per_node,
                     learner_gpus, ports.next_free, tuple(memory))


def format_plan(p: Placement) -> str:
    """One line per role and node; memory estimates last."""
    def servers(role: str, group: Sequence[Server]) -> List[str]:
        return [f"  {role} server {s.index}: {s.node}:{s.port}" + (f" gpus {','.join(map(str, s.gpus))}" if s.gpus else "")
                for s in group]

    gpus = f", {p.profile.gpus_per_node} GPUs/node" if p.profile.gpus_per_node else ", CPU"
    lines = [f"placement on {len(p.nodes)} node(s) ({' '.join(p.nodes)}), profile {p.profile.name}{gpus}:"]
    lines += servers("teacher", p.teacher) or ["  teacher: inside the learner (no servers)"]
    lines += servers("student", p.student)
    if p.router:
        lines.append(f"  student router: {p.router.node}:{p.router.port} -> {len(p.student)} servers")
    lines.append(f"  learner: {len(p.learner_nodes)} node(s) ({' '.join(p.learner_nodes)}) x "
                 f"{p.learner_procs_per_node} process(es), MASTER_ADDR={p.master_addr}:{p.master_port}")
    lines += [f"  memory: {m.what} (budget {m.budget_gib:.1f} GiB/GPU)" for m in p.memory]
    return "\n".join(lines)


def shell_exports(p: Placement) -> str:
    """OPD_* variables for ``eval`` in slurm/opd.sbatch (values shell-quoted).

    Per role R in TEACHER/STUDENT: OPD_R_NODES, OPD_R_PORTS, OPD_R_GPUS (one comma list per
    server, space separated), OPD_R_URLS (comma separated, the form of engines.R.urls).
    """
    def var(name: str, value: Any) -> str:
        return f"{name}={shlex.quote(str(value))}"

    out = [var("OPD_NODES", " ".join(p.nodes))]
    for role, group in (("TEACHER", p.teacher), ("STUDENT", p.student)):
        out += [var(f"OPD_{role}_NODES", " ".join(s.node for s in group)),
                var(f"OPD_{role}_PORTS", " ".join(str(s.port) for s in group)),
                var(f"OPD_{role}_GPUS", " ".join(",".join(map(str, s.gpus)) or "-" for s in group)),
                var(f"OPD_{role}_URLS", ",".join(s.url for s in group))]
    out += [var("OPD_ROUTER_NODE", p.router.node if p.router else ""),
            var("OPD_ROUTER_PORT", p.router.port if p.router else ""),
            var("OPD_ROUTER_URL", p.router.url if p.router else ""),
            var("OPD_LEARNER_NODES", ",".join(p.learner_nodes)),
            var("OPD_LEARNER_NUM_NODES", len(p.learner_nodes)),
            var("OPD_LEARNER_PROCS_PER_NODE", p.learner_procs_per_node),
            var("OPD_LEARNER_GPUS", ",".join(map(str, p.learner_gpus))),
            var("OPD_MASTER_ADDR", p.master_addr),
            var("OPD_MASTER_PORT", p.master_port),
            var("OPD_BIND_HOST", p.profile.bind_host),
            var("OPD_CONTAINER_IMAGE", p.profile.container_image or ""),
            var("OPD_CONTAINER_MOUNTS", ",".join(p.profile.container_mounts)),
            var("OPD_SRUN_ARGS", " ".join(p.profile.srun_args))]
    out += [f"export {var(k, v)}" for k, v in sorted(p.profile.env.items())]
    return "\n".join(out) + "\n"
