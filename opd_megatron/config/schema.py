"""The one typed schema for every setting of a run.

A recipe (``recipes/*.yaml``) is a small YAML diff over these dataclasses; the command line
adds ``key=value`` overrides with dotted paths. Every field has a default and a docstring
(the string literal under it). Cross-field rules (tp vs heads, roles vs nodes, ...) live in
``opd_megatron.config.validate``; this file only says what exists and what it means.

Allowed values of string choices are listed in ``CHOICES`` so the validator and the docs
read them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunConfig:
    name: str = "opd-run"
    """Run name; the run directory is ``{output_dir}/{name}``."""
    seed: int = 1234
    """Seed for data order, sampling and initialisation; fixes a CPU run bit for bit."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    num_steps: int = 10
    """Number of optimizer steps (one rollout batch each)."""
    log_interval: int = 1
    """Steps between metric log lines."""
    quiet: bool = False
    """Plain one-line-per-step logs instead of the live progress display."""
    on_nonfinite: str = "skip"
    """What a NaN/inf in teacher logprobs, advantages or loss does: skip (the step, counted) | stop."""
    overwrite: bool = False
    """Allow starting fresh in a run directory that holds another config (else: resume or refuse)."""


@dataclass
class ModelConfig:
    path: str = ""
    """HF model directory (config.json + safetensors + tokenizer)."""
    tokenizer: Optional[str] = None
    """Tokenizer directory; defaults to ``path``."""
    dtype: str = "float32"
    """Compute dtype: float32 | bfloat16 | float16. CPU runs use float32."""
    prepare: Optional[str] = None
    """Recipe that builds this checkpoint when ``path`` does not exist (tiny CPU models)."""
    flops_name: Optional[str] = None
    """Shape name for FLOPs/plan estimates when the config is not readable (e.g. qwen3-8b)."""


@dataclass
class DataConfig:
    source: str = "arithmetic"
    """Prompt source: arithmetic (generated task) | instruct (the generated task with IF-eval
    style format instructions, opd_megatron.data.knowledge) | midtrain (documents of new
    facts, mixed with instruct samples at data.chat_ratio) | jsonl (a file) | hf (datasets at
    run time)."""
    path: Optional[str] = None
    """File or dataset name for jsonl/hf sources."""
    split: str = "train"
    """Dataset split to draw training prompts from."""
    prompt_key: str = "prompt"
    """Field holding the prompt text (jsonl/hf)."""
    answer_key: str = "answer"
    """Field holding the verifiable answer (jsonl/hf)."""
    chat_template: str = "none"
    """none (raw prompt text) | tokenizer (apply the tokenizer's chat template)."""
    num_heldout: int = 500
    """Held-out prompts of the generated task, never trained on."""
    min_ops: int = 2
    """Generated task: fewest operators per expression."""
    max_ops: int = 4
    """Generated task: most operators per expression."""
    num_sft_samples: int = 4096
    """Teacher samples drawn for the off-policy (SFT) dataset."""
    sft_targets: str = "teacher"
    """What sft trains on: teacher (fresh teacher samples = off-policy distillation) | reference
    (the task's ground-truth solutions; how the tiny teacher itself is trained)."""
    facts_seed: int = 0
    """midtrain: which fact set the documents hold (the continual recipe uses one per round)."""
    num_facts: int = 200
    """midtrain: facts in the set."""
    facts_per_document: int = 4
    """midtrain: facts strung together in one document."""
    chat_ratio: float = 0.0
    """midtrain: fraction of samples that are instruct (chat) samples instead of documents."""
    replay_ratio: float = 0.0
    """midtrain: fraction of documents made of facts of the earlier fact sets
    data.replay_facts_seeds (rehearsal); `opd continual` fills those in per round."""
    replay_facts_seeds: List[int] = field(default_factory=list)
    """midtrain: the fact sets (facts_seed values) that replayed documents draw from."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 64
    """Distinct prompts per step."""
    samples_per_prompt: int = 1
    """Samples per prompt (G, the group size)."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the student."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k sampling; -1 disables."""


@dataclass
class ObjectiveConfig:
    method: str = "opd"
    """opd | sft (off-policy distillation) | rl (GRPO, verifiable reward) | opd+reward."""
    kl_coef: float = 1.0
    """Weight of the per-token reverse-KL advantage."""
    discount: float = 0.0
    """Discount of future per-token KL terms (0: each token only its own, the TML recipe)."""
    reward_weight: float = 0.0
    """Weight of the group-normalised environment reward (rl: 1, opd+reward: >0)."""
    kl_estimator: str = "sampled_token"
    """sampled_token (logp_s - logp_t on the sampled token) | full_vocab (exact KL per position)."""
    divergence: str = "reverse_kl"
    """Full-distribution divergence: reverse_kl | forward_kl | jsd."""
    jsd_beta: float = 0.5
    """Generalized JSD interpolation (0: forward KL, 1: reverse KL)."""
    teacher_top_k: int = 0
    """Teacher top-k logprobs per position for full-distribution losses; 0: sampled token only."""
    is_correction: str = "truncated"
    """Importance-sampling correction: plain | truncated | ppo_clip."""
    is_cap: float = 2.0
    """Cap of the ratio for truncated IS."""
    clip_eps: float = 0.2
    """PPO clip range."""
    loss_norm: str = "token_mean"
    """token_mean (over all response tokens of the batch) | seq_mean."""
    teacher_temperature: float = 1.0
    """Temperature at which the teacher scores tokens."""
    teacher_backend: str = "sglang"
    """sglang (a teacher server) | megatron (a frozen teacher inside the learner)."""


@dataclass
class OptimConfig:
    lr: float = 3.0e-4
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule."""
    schedule: str = "constant"
    """constant | cosine (both after linear warmup)."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.99
    """Adam beta2."""
    eps: float = 1.0e-8
    """Adam epsilon."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""


@dataclass
class ParallelConfig:
    tp: int = 1
    """Learner tensor-parallel size."""
    pp: int = 1
    """Learner pipeline-parallel size."""
    dp: int = 1
    """Learner data-parallel size."""
    microbatch_tokens: int = 4096
    """Token budget of one learner microbatch."""
    distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (Megatron distributed optimizer)."""


LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
"""Megatron linears LoRA can adapt: attention QKV and output, MLP gate/up and down."""


@dataclass
class LoraConfig:
    rank: int = 0
    """LoRA rank r of the student's adapters; 0: off (full fine-tuning)."""
    alpha: float = 32.0
    """LoRA alpha; the adapter update is scaled by alpha / rank."""
    targets: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Linears that get adapters: any of linear_qkv, linear_proj, linear_fc1, linear_fc2."""


@dataclass
class EngineRoleConfig:
    num_servers: int = 1
    """SGLang servers for this role."""
    tp: int = 1
    """Tensor-parallel size of each server."""
    mem_fraction: float = 0.8
    """GPU memory fraction for weights + KV cache (GPU only)."""
    max_total_tokens: int = 65536
    """KV-cache capacity in tokens (keeps CPU RAM bounded)."""
    dtype: str = "float32"
    """Serving dtype: float32 | bfloat16 | float16."""
    extra_args: List[str] = field(default_factory=list)
    """Extra SGLang command-line flags."""
    urls: List[str] = field(default_factory=list)
    """URLs of servers started elsewhere (e.g. by the sbatch script); set: none are launched."""


@dataclass
class EnginesConfig:
    student: EngineRoleConfig = field(default_factory=EngineRoleConfig)
    """Student (rollout) servers."""
    teacher: EngineRoleConfig = field(default_factory=EngineRoleConfig)
    """Teacher (scoring) servers."""
    host: str = "127.0.0.1"
    """Bind address; only a cluster profile should widen it."""
    base_port: int = 31000
    """First port; servers take consecutive ports."""
    router: bool = False
    """Put student servers behind sglang-router (data-parallel rollouts)."""
    startup_timeout_s: float = 300.0
    """Seconds to wait for a server to become healthy."""
    request_timeout_s: float = 120.0
    """Seconds before one request is abandoned."""
    max_retries: int = 3
    """Retries per request (exponential backoff) before the run fails."""
    max_restarts: int = 2
    """Restarts of a launched SGLang server that died or stopped answering, per engine call:
    the server is started again, student servers get the learner's current weights, and the
    call is retried (no step is lost or done twice). 0: fail at once. Servers given by
    ``urls`` are not ours to restart."""
    max_concurrency: int = 64
    """Requests in flight per role."""
    flush_teacher_cache: bool = True
    """Flush the teacher servers' prefix cache before each teacher call, so its scores depend
    only on that call's requests, not on what earlier steps or a restart left cached: a
    resumed, requeued or server-restarted run stays bit-identical. It loses the reuse of a
    prefix shared across steps (a system prompt): bench/engine_throughput.py measured 0.88x
    scoring speed with a 2-shot prefix. false for a teacher shared with other runs (a flush
    waits for their requests and drops their cache), or on GPUs without SGLang's deterministic
    inference, where scores are not bit-reproducible anyway."""
    weight_sync: str = "tensor"
    """tensor (same host) | disk (HF directory) | distributed (NCCL, GPU only)."""
    api_key_env: Optional[str] = None
    """Environment variable holding the servers' API key (never logged)."""
    device: str = "auto"
    """Where servers run: auto (cuda if torch sees a GPU, else cpu) | cpu | cuda. cpu adds the
    CPU-only SGLang flags (see opd_megatron/engines/launcher.py)."""


@dataclass
class EvalConfig:
    interval: int = 5
    """Steps between evaluations; 0: only before and after."""
    num_prompts: int = 200
    """Held-out prompts per evaluation."""
    samples_per_prompt: int = 1
    """k for avg@k / pass@k."""
    temperature: float = 0.0
    """Eval sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Eval nucleus mass."""
    top_k: int = -1
    """Eval top-k; -1 disables."""
    max_new_tokens: int = 48
    """Eval response length."""
    preset: str = "none"
    """none | qwen3 (T 0.6, top-p 0.95, top-k 20, 64 samples) | tml (32 samples)."""
    benchmarks: List[str] = field(default_factory=list)
    """Extra benchmarks at every eval, on the student servers: aime24 | aime25 | math500 |
    gpqa_diamond | ifeval (datasets at run time) | arithmetic (the tiny task)."""


@dataclass
class CheckpointConfig:
    interval: int = 10
    """Steps between checkpoints; 0: only at the end."""
    keep: int = 2
    """Checkpoints kept on disk (oldest removed first)."""
    resume: bool = True
    """Resume from the latest checkpoint in the run directory."""
    export_hf: bool = True
    """Export the final student in HF format."""


@dataclass
class ReportConfig:
    enabled: bool = True
    """Write report.md at the end of the run (also on failure)."""
    plots: bool = True
    """Render PNG plots into the report."""


@dataclass
class ClusterConfig:
    profile: str = "local-cpu"
    """Cluster profile name in configs/clusters/ (where it runs, never what is trained)."""
    num_nodes: int = 1
    """Nodes in the allocation."""
    gpus_per_node: int = 0
    """Accelerators per node (0: CPU)."""
    learner_nodes: int = 1
    """Nodes of the Megatron learner."""
    student_nodes: int = 0
    """Nodes dedicated to student servers (0: share the learner's)."""
    teacher_nodes: int = 0
    """Nodes dedicated to teacher servers (0: share the learner's)."""
    signal_s: int = 120
    """Seconds before the time limit at which Slurm signals a checkpoint + requeue."""


@dataclass
class ContinualConfig:
    """``opd continual``: rounds of mid-training on new documents, each followed by OPD from an
    earlier checkpoint of the run to bring the assistant behaviour back."""

    rounds: int = 1
    """Rounds of (mid-train, OPD); round r trains on fact set data.facts_seed + r."""
    midtrain_steps: int = 100
    """SFT steps on the round's documents (data.source=midtrain, mixed per data.chat_ratio)."""
    midtrain_lr: float = 1.0e-3
    """Learning rate of the mid-training phase (the OPD phase uses optim.lr)."""
    opd_steps: int = 50
    """On-policy distillation steps on instruct prompts after each mid-training."""
    teacher: str = "round_start"
    """The OPD teacher: round_start (the checkpoint the round began from) | base (the run's
    first model, every round)."""
    eval_facts: int = 200
    """Facts of each round asked back after every phase (knowledge recall)."""
    eval_instructions: int = 200
    """Held-out instruct prompts after every phase (instruction following + accuracy)."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    engines: EnginesConfig = field(default_factory=EnginesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)


CHOICES = {
    "run.on_nonfinite": ("skip", "stop"),
    "student.dtype": ("float32", "bfloat16", "float16"),
    "teacher.dtype": ("float32", "bfloat16", "float16"),
    "data.source": ("arithmetic", "instruct", "midtrain", "jsonl", "hf"),
    "continual.teacher": ("round_start", "base"),
    "data.chat_template": ("none", "tokenizer"),
    "data.sft_targets": ("teacher", "reference"),
    "objective.method": ("opd", "sft", "rl", "opd+reward"),
    "objective.kl_estimator": ("sampled_token", "full_vocab"),
    "objective.divergence": ("reverse_kl", "forward_kl", "jsd"),
    "objective.is_correction": ("plain", "truncated", "ppo_clip"),
    "objective.loss_norm": ("token_mean", "seq_mean"),
    "objective.teacher_backend": ("sglang", "megatron"),
    "optim.schedule": ("constant", "cosine"),
    "engines.student.dtype": ("float32", "bfloat16", "float16"),
    "engines.teacher.dtype": ("float32", "bfloat16", "float16"),
    "engines.weight_sync": ("tensor", "disk", "distributed"),
    "engines.device": ("auto", "cpu", "cuda"),
    "eval.preset": ("none", "qwen3", "tml"),
}
