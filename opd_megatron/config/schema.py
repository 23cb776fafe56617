"""The one typed schema for every setting of a run.

A recipe (``recipes/*.yaml``) is a small YAML diff over these dataclasses; the command line
adds ``key=value`` overrides with dotted paths. Every field has a default and a docstring
(the string literal under it), and, where it has one, its range (``ranged``: a predicate and
the words the error quotes) or its choices (``choice``), written once at the field: a section
used under several keys (``EngineRoleConfig`` under ``engines.student`` and
``engines.teacher``) carries them once. ``CHOICES`` and ``RANGES`` at the bottom list them by
dotted key for the validator and the docs. Rules across fields (tp vs heads, roles vs nodes,
...) live in ``opd_megatron.config.validate``; this file only says what exists, what it means
and what each value may be.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, get_type_hints

RANGE = "range"
"""Field metadata key of ``ranged``: (what is allowed, in words; predicate)."""
CHOICE = "choices"
"""Field metadata key of ``choice``: the allowed values."""


def ranged(default: Any, allowed: str, ok: Callable[[Any], bool]) -> Any:
    """A field with its range: ``ok(value)`` must hold; ``allowed`` says what that is in the
    error (``{key}: must be {allowed} (got {value!r})``)."""
    return field(default=default, metadata={RANGE: (allowed, ok)})


def choice(default: str, allowed: Tuple[str, ...]) -> Any:
    """A string field that takes one of ``allowed``."""
    assert default in allowed, f"default {default!r} is not one of {allowed}"
    return field(default=default, metadata={CHOICE: tuple(allowed)})


@dataclass
class RunConfig:
    name: str = ranged("opd-run", "a non-empty name without '/'",
                       lambda v: bool(v) and "/" not in v and v not in (".", ".."))
    """Run name; the run directory is ``{output_dir}/{name}``."""
    seed: int = ranged(1234, ">= 0", lambda v: v >= 0)
    """Seed for data order, sampling and initialisation; fixes a CPU run bit for bit."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    num_steps: int = ranged(10, ">= 1", lambda v: v >= 1)
    """Number of optimizer steps (one rollout batch each)."""
    log_interval: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Steps between metric log lines."""
    quiet: bool = False
    """Plain one-line-per-step logs instead of the live progress display."""
    on_nonfinite: str = choice("skip", ("skip", "stop"))
    """What a NaN/inf in teacher logprobs, advantages or loss does: skip (the step, counted) | stop."""
    overwrite: bool = False
    """Allow starting fresh in a run directory that holds another config (else: resume or refuse)."""
    rehearse: bool = False
    """Run this recipe shrunk to this machine through every stage (tiny models of the same
    kind, toy sizes, a stop and resume at step 2); prints what it replaced
    (opd_megatron/run/rehearse.py). ``opd run RECIPE --rehearse``."""
    hub_cache: Optional[str] = None
    """The directory ``opd fetch RECIPE`` fills with the recipe's hub datasets, benchmarks and
    models, and that runs read them from with the hub offline (opd_megatron/run/fetch.py);
    default ``$OPD_HUB_CACHE``, else ``~/.cache/opd-megatron/hub``. On a cluster: a filesystem
    the compute nodes share."""


@dataclass
class ModelConfig:
    path: str = ""
    """HF model directory (config.json + safetensors + tokenizer)."""
    tokenizer: Optional[str] = None
    """Tokenizer directory; defaults to ``path``."""
    dtype: str = choice("float32", ("float32", "bfloat16", "float16"))
    """Compute dtype: float32 | bfloat16 | float16. CPU runs use float32."""
    prepare: Optional[str] = None
    """Recipe that builds this checkpoint when ``path`` does not exist (tiny CPU models), or
    ``tiny-random:<shape>`` (random init, char tokenizer) or ``tiny-random-bpe:<shape>`` (random
    init, Qwen3-like BPE tokenizer), the shape one of RANDOM_SHAPES."""
    flops_name: Optional[str] = None
    """Shape name for FLOPs/plan estimates when the config is not readable (e.g. qwen3-8b)."""
    hub_id: Optional[str] = None
    """Hub repo of this checkpoint (e.g. Qwen/Qwen3-8B): ``opd fetch RECIPE --models`` downloads
    it into run.hub_cache, and a run whose ``path`` is not here reads that copy."""


RANDOM_PREFIX = "tiny-random:"
"""``model.prepare`` of this form builds a randomly initialised tiny model of a named shape."""
RANDOM_SHAPES = ("teacher", "student", "student-1layer")
"""The shapes ``tiny-random:<shape>`` (and ``tiny-random-bpe:<shape>``) can name."""
RANDOM_BPE_PREFIX = "tiny-random-bpe:"
"""``model.prepare`` of this form builds a random tiny model of a named shape with the Qwen3-like
byte-level BPE tokenizer (ChatML, thinking template, padded embedding; opd_megatron.models.tiny_bpe)."""
RANDOM_PREFIXES = (RANDOM_PREFIX, RANDOM_BPE_PREFIX)
"""Every ``model.prepare`` prefix that builds a random model instead of running a recipe."""


@dataclass
class DataConfig:
    source: str = choice("arithmetic", ("arithmetic", "instruct", "midtrain", "jsonl", "parquet",
                                        "disk", "hf"))
    """The task (opd_megatron.data.tasks): arithmetic (generated task) | instruct (the generated
    task with IF-eval style format instructions, opd_megatron.data.knowledge) | midtrain
    (documents of new facts, mixed with instruct samples at data.chat_ratio) | jsonl (a file,
    one JSON object per line) | parquet (a .parquet file or a directory of them) | disk (a
    ``datasets.save_to_disk`` directory) | hf (``datasets.load_dataset(data.path)``: a hub id,
    or a local dataset directory; offline, a local path or a pre-filled cache). Preflight reads
    and checks the rows of every local dataset; a hub id's rows are checked as the run loads
    them, before any server starts."""
    path: Optional[str] = None
    """The dataset of the jsonl/parquet/disk/hf sources: a local path (every source) or a hub
    id (hf only)."""
    split: str = "train"
    """Split of a disk (DatasetDict) or hf dataset that the rows come from."""
    prompt_key: str = "prompt"
    """Dataset field holding the prompt text (DeepMath: question)."""
    answer_key: str = "answer"
    """Dataset field holding the verifiable answer, graded by data.grader (DeepMath:
    final_answer); every row needs one when the run grades (a reward method, or num_heldout > 0)."""
    reference_key: str = "reference"
    """Dataset field holding a reference solution, trained on by objective.method=sft with
    data.sft_targets=reference (DeepMath: r1_solution_1)."""
    grader: str = choice("auto", ("auto", "arithmetic", "math", "choice"))
    """What grades an answer (the reward and the in-loop accuracy): auto (arithmetic for the
    generated tasks, math for datasets) | arithmetic (exact match of the final '#number') |
    math (math-verify on the final answer, the benchmarks' grader: \\frac{1}{2} = 0.5) |
    choice (the chosen letter A-D)."""
    chat_template: str = choice("none", ("none", "tokenizer"))
    """none (raw prompt text) | tokenizer (apply the tokenizer's chat template)."""
    eos_token: Optional[str] = None
    """The token that ends every response, for student and teacher alike (sampling stops on
    it, reference solutions end with it); default: the student tokenizer's eos. Set it when
    the two disagree, e.g. a base student (``<|endoftext|>``) with an instruct teacher
    (``<|im_end|>``): preflight checks it is one token with the same id in both tokenizers."""
    num_heldout: int = ranged(500, ">= 0 (0: no in-loop accuracy)", lambda v: v >= 0)
    """Held-out prompts, never trained on, that the in-loop accuracy (and reverse KL) is
    measured on. Generated tasks: the task's fixed held-out problems. Datasets: this many
    distinct prompts, chosen by a hash of the prompt text (independent of run.seed and of the
    row order; a larger value keeps the smaller one's rows), and every row with one of those
    prompts is left out of training; it must be below the dataset's distinct prompts (a
    400-row file is never held out whole: preflight refuses). 0: nothing held out, the run is
    evaluated on eval.benchmarks only."""
    min_ops: int = ranged(2, ">= 1", lambda v: v >= 1)
    """Generated task: fewest operators per expression."""
    max_ops: int = 4
    """Generated task: most operators per expression."""
    num_sft_samples: int = ranged(4096, ">= 1", lambda v: v >= 1)
    """Teacher samples drawn for the off-policy (SFT) dataset."""
    sft_targets: str = choice("teacher", ("teacher", "reference"))
    """What sft trains on: teacher (fresh teacher samples = off-policy distillation) | reference
    (the task's ground-truth solutions; how the tiny teacher itself is trained)."""
    facts_seed: int = 0
    """midtrain: which fact set the documents hold (the continual recipe uses one per round)."""
    num_facts: int = ranged(200, "in [1, 900] (3-digit keys)", lambda v: 1 <= v <= 900)
    """midtrain: facts in the set."""
    facts_per_document: int = ranged(4, ">= 1", lambda v: v >= 1)
    """midtrain: facts strung together in one document."""
    chat_ratio: float = ranged(0.0, "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    """midtrain: fraction of samples that are instruct (chat) samples instead of documents."""
    replay_ratio: float = ranged(0.0, "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    """midtrain: fraction of documents made of facts of the earlier fact sets
    data.replay_facts_seeds (rehearsal); `opd continual` fills those in per round."""
    replay_facts_seeds: List[int] = field(default_factory=list)
    """midtrain: the fact sets (facts_seed values) that replayed documents draw from."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = ranged(64, ">= 1", lambda v: v >= 1)
    """Distinct prompts per step."""
    samples_per_prompt: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Samples per prompt (G, the group size)."""
    max_new_tokens: int = ranged(48, ">= 1", lambda v: v >= 1)
    """Longest response in tokens."""
    temperature: float = ranged(1.0, "> 0 (on-policy training needs sampling logprobs)",
                                lambda v: v > 0)
    """Sampling temperature of the student."""
    top_p: float = ranged(1.0, "in (0, 1]", lambda v: 0 < v <= 1)
    """Nucleus sampling mass."""
    top_k: int = ranged(-1, "-1 (off) or >= 1", lambda v: v == -1 or v >= 1)
    """Top-k sampling; -1 disables."""
    max_staleness: int = ranged(0, ">= 0", lambda v: v >= 0)
    """Weight versions a training rollout lags the learner by. 0: the synchronous loop (sample,
    score, train, push). k: while the learner trains step n the servers sample and score step n+k
    with the weights they hold, and the push lands after that batch (between requests)."""
    stream_chunks: int = ranged(0, ">= 0", lambda v: v >= 0)
    """0: the teacher scores a step's rollouts once all are sampled. 1: each rollout goes to a
    teacher server as soon as it finishes (the batch sampled as with 0, streamed), scored alone.
    N >= 2: the step's prompts go out as N batches (one server each, in a fixed order) and each is
    scored as soon as it is sampled."""
    offpolicy_prefetch_steps: int = ranged(1, ">= 1", lambda v: v >= 1)
    """sft on teacher samples: draw the teacher data of this many steps in one engine call (at
    steps 1, 1+k, 1+2k, ..., whatever run.num_steps is, so a longer run continues a shorter one).
    The teacher does not change, so the data are of the same kind; one long call keeps the
    servers' batches full (raise engines.max_concurrency with it). Batches drawn ahead are
    checkpointed. Ignored by on-policy methods."""


@dataclass
class ObjectiveConfig:
    method: str = choice("opd", ("opd", "sft", "rl", "opd+reward"))
    """opd | sft (off-policy distillation) | rl (GRPO, verifiable reward) | opd+reward."""
    kl_coef: float = ranged(1.0, ">= 0", lambda v: v >= 0)
    """Weight of the per-token reverse-KL advantage."""
    discount: float = ranged(0.0, "in [0, 1]", lambda v: 0 <= v <= 1)
    """Discount of future per-token KL terms (0: each token only its own, the TML recipe)."""
    reward_weight: float = ranged(0.0, ">= 0", lambda v: v >= 0)
    """Weight of the group-normalised environment reward (rl: 1, opd+reward: >0)."""
    kl_at: str = choice("sampler", ("sampler", "learner"))
    """Student logprob in the sampled-token reverse KL: sampler (the rollout's own, the TML form) |
    learner (recomputed by the learner before the step: what stale rollouts need, as in AsyncOPD)."""
    kl_estimator: str = choice("sampled_token", ("sampled_token", "full_vocab"))
    """sampled_token (logp_s - logp_t on the sampled token) | full_vocab (exact KL per position)."""
    divergence: str = choice("reverse_kl", ("reverse_kl", "forward_kl", "jsd"))
    """Full-distribution divergence: reverse_kl | forward_kl | jsd."""
    jsd_beta: float = ranged(0.5, "in [0, 1]", lambda v: 0 <= v <= 1)
    """Generalized JSD interpolation (0: forward KL, 1: reverse KL)."""
    teacher_top_k: int = ranged(0, ">= 0", lambda v: v >= 0)
    """Teacher top-k logprobs per position for full-distribution losses; 0: sampled token only."""
    is_correction: str = choice("truncated", ("plain", "truncated", "ppo_clip"))
    """Importance-sampling correction: plain | truncated | ppo_clip."""
    is_cap: float = ranged(2.0, ">= 1", lambda v: v >= 1)
    """Cap of the ratio for truncated IS."""
    clip_eps: float = ranged(0.2, "in (0, 1)", lambda v: 0 < v < 1)
    """PPO clip range."""
    loss_norm: str = choice("token_mean", ("token_mean", "seq_mean"))
    """token_mean (over all response tokens of the batch) | seq_mean."""
    teacher_temperature: float = ranged(1.0, "> 0 (0 is not a distribution to score under)",
                                        lambda v: v > 0)
    """Temperature at which the teacher scores tokens."""
    teacher_backend: str = choice("sglang", ("sglang", "megatron"))
    """sglang (a teacher server) | megatron (a frozen teacher inside the learner)."""


@dataclass
class OptimConfig:
    lr: float = ranged(3.0e-4, "> 0", lambda v: v > 0)
    """Peak learning rate."""
    min_lr: float = ranged(0.0, ">= 0", lambda v: v >= 0)
    """Final learning rate of the cosine schedule."""
    schedule: str = choice("constant", ("constant", "cosine"))
    """constant | cosine (both after linear warmup)."""
    warmup_steps: int = ranged(10, ">= 0", lambda v: v >= 0)
    """Linear warmup steps."""
    weight_decay: float = ranged(0.0, ">= 0", lambda v: v >= 0)
    """AdamW weight decay."""
    beta1: float = ranged(0.9, "in [0, 1)", lambda v: 0 <= v < 1)
    """Adam beta1."""
    beta2: float = ranged(0.99, "in [0, 1)", lambda v: 0 <= v < 1)
    """Adam beta2."""
    eps: float = ranged(1.0e-8, "> 0", lambda v: v > 0)
    """Adam epsilon."""
    grad_clip: float = ranged(1.0, ">= 0 (0 disables)", lambda v: v >= 0)
    """Global gradient-norm clip; 0 disables."""


@dataclass
class ParallelConfig:
    tp: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Learner tensor-parallel size."""
    pp: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Learner pipeline-parallel size."""
    dp: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Learner data-parallel size."""
    microbatch_tokens: int = ranged(4096, ">= 1", lambda v: v >= 1)
    """Token budget of one learner microbatch."""
    distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (Megatron distributed optimizer)."""


LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
"""Megatron linears LoRA can adapt: attention QKV and output, MLP gate/up and down."""


@dataclass
class LoraConfig:
    rank: int = ranged(0, ">= 0 (0: off)", lambda v: v >= 0)
    """LoRA rank r of the student's adapters; 0: off (full fine-tuning)."""
    alpha: float = 32.0
    """LoRA alpha; the adapter update is scaled by alpha / rank."""
    targets: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Linears that get adapters: any of linear_qkv, linear_proj, linear_fc1, linear_fc2."""


@dataclass
class EngineRoleConfig:
    num_servers: int = ranged(1, ">= 1", lambda v: v >= 1)
    """SGLang servers for this role."""
    tp: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Tensor-parallel size of each server."""
    mem_fraction: float = ranged(0.8, "in (0, 1]", lambda v: 0 < v <= 1)
    """GPU memory fraction for weights + KV cache (GPU only)."""
    max_total_tokens: int = ranged(65536, ">= 256", lambda v: v >= 256)
    """KV-cache capacity in tokens (keeps CPU RAM bounded)."""
    dtype: str = choice("float32", ("float32", "bfloat16", "float16"))
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
    base_port: int = ranged(31000, "in [1024, 65000]", lambda v: 1024 <= v <= 65000)
    """First port; servers take consecutive ports."""
    router: bool = False
    """Put student servers behind sglang-router (data-parallel rollouts)."""
    startup_timeout_s: float = ranged(300.0, "> 0", lambda v: v > 0)
    """Seconds to wait for a server to become healthy."""
    request_timeout_s: float = ranged(120.0, "> 0", lambda v: v > 0)
    """Seconds before one request is abandoned."""
    max_retries: int = ranged(3, ">= 0", lambda v: v >= 0)
    """Retries per request (exponential backoff) before the run fails."""
    max_restarts: int = ranged(2, ">= 0", lambda v: v >= 0)
    """Restarts of a launched SGLang server that died or stopped answering, per engine call:
    the server is started again, student servers get the learner's current weights, and the
    call is retried (no step is lost or done twice). 0: fail at once. Servers given by
    ``urls`` are not ours to restart."""
    max_concurrency: int = ranged(64, ">= 1", lambda v: v >= 1)
    """Requests in flight per role."""
    flush_teacher_cache: bool = True
    """Flush the teacher servers' prefix cache before each teacher call, so its scores depend
    only on that call's requests, not on what earlier steps or a restart left cached: a
    resumed, requeued or server-restarted run stays bit-identical. It loses the reuse of a
    prefix shared across steps (a system prompt): bench/engine_throughput.py measured 0.88x
    scoring speed with a 2-shot prefix. false for a teacher shared with other runs (a flush
    waits for their requests and drops their cache), or on GPUs without SGLang's deterministic
    inference, where scores are not bit-reproducible anyway."""
    weight_sync: str = choice("tensor", ("tensor", "disk", "distributed"))
    """tensor (same host) | disk (HF directory) | distributed (a process-group broadcast from
    learner rank 0: NCCL on GPUs, gloo on CPU)."""
    api_key_env: Optional[str] = None
    """Environment variable holding the servers' API key (never logged)."""
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    """Where servers run: auto (cuda if torch sees a GPU, else cpu) | cpu | cuda. cpu adds the
    CPU-only SGLang flags (see opd_megatron/engines/launcher.py)."""


@dataclass
class EvalConfig:
    interval: int = ranged(5, ">= 0 (0: only before and after)", lambda v: v >= 0)
    """Steps between evaluations; 0: only before and after."""
    num_prompts: int = ranged(200, ">= 1", lambda v: v >= 1)
    """Held-out prompts per evaluation (the first of the data.num_heldout; at most that many)."""
    samples_per_prompt: int = ranged(1, ">= 1", lambda v: v >= 1)
    """k for avg@k / pass@k."""
    temperature: float = ranged(0.0, ">= 0 (0: greedy)", lambda v: v >= 0)
    """Eval sampling temperature (0: greedy)."""
    top_p: float = ranged(1.0, "in (0, 1]", lambda v: 0 < v <= 1)
    """Eval nucleus mass."""
    top_k: int = -1
    """Eval top-k; -1 disables."""
    max_new_tokens: int = ranged(48, ">= 1", lambda v: v >= 1)
    """Eval response length."""
    stop_at_accuracy: float = ranged(0.0, "in [0, 1] (0: off)", lambda v: 0.0 <= v <= 1.0)
    """Stop training at the first eval (every eval.interval steps) whose held-out accuracy
    reaches this; the run ends as a finished one (final checkpoint and export). 0: off.
    ``opd compare`` trains each arm to its target accuracy with it."""
    preset: str = choice("none", ("none", "qwen3", "tml"))
    """Evaluation protocol of eval.benchmarks (opd_megatron.evaluation.suite.PROTOCOLS): none (the
    fields above) | qwen3 (Qwen3 report: thinking, T 0.6, top-p 0.95, top-k 20, 32,768 tokens; AIME
    38,912 tokens x 64 samples) | tml (the same, AIME x 32 samples). The report names it per number."""
    benchmarks: List[str] = field(default_factory=list)
    """Extra benchmarks at every eval, on the student servers: aime24 | aime25 | math500 |
    gpqa_diamond | ifeval (datasets at run time) | arithmetic (the tiny task)."""
    benchmark_files: Dict[str, str] = field(default_factory=dict)
    """Local files of eval.benchmarks by name (``{aime24: data/aime24.jsonl}``): JSON, JSONL or
    Parquet in the public dataset's schema, read instead of the hub (offline nodes)."""


@dataclass
class CheckpointConfig:
    interval: int = ranged(10, ">= 0 (0: only at the end)", lambda v: v >= 0)
    """Steps between checkpoints; 0: only at the end."""
    keep: int = ranged(2, ">= 1", lambda v: v >= 1)
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
    num_nodes: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Nodes in the allocation."""
    gpus_per_node: int = ranged(0, ">= 0", lambda v: v >= 0)
    """Accelerators per node (0: CPU)."""
    learner_nodes: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Nodes of the Megatron learner."""
    student_nodes: int = ranged(0, ">= 0", lambda v: v >= 0)
    """Nodes dedicated to student servers (0: share the learner's)."""
    teacher_nodes: int = ranged(0, ">= 0", lambda v: v >= 0)
    """Nodes dedicated to teacher servers (0: share the learner's)."""
    signal_s: int = ranged(120, ">= 0", lambda v: v >= 0)
    """Seconds before the time limit at which Slurm signals a checkpoint + requeue."""


@dataclass
class ContinualConfig:
    """``opd continual``: rounds of mid-training on new documents, each followed by OPD from an
    earlier checkpoint of the run to bring the assistant behaviour back."""

    rounds: int = ranged(1, ">= 1", lambda v: v >= 1)
    """Rounds of (mid-train, OPD); round r trains on fact set data.facts_seed + r."""
    midtrain_steps: int = ranged(100, ">= 1", lambda v: v >= 1)
    """SFT steps on the round's documents (data.source=midtrain, mixed per data.chat_ratio)."""
    midtrain_lr: float = ranged(1.0e-3, "> 0", lambda v: v > 0)
    """Learning rate of the mid-training phase (the OPD phase uses optim.lr)."""
    opd_steps: int = ranged(50, ">= 1", lambda v: v >= 1)
    """On-policy distillation steps on instruct prompts after each mid-training."""
    teacher: str = choice("round_start", ("round_start", "base"))
    """The OPD teacher: round_start (the checkpoint the round began from) | base (the run's
    first model, every round)."""
    eval_facts: int = ranged(200, ">= 1", lambda v: v >= 1)
    """Facts of each round asked back after every phase (knowledge recall)."""
    eval_instructions: int = ranged(200, ">= 1", lambda v: v >= 1)
    """Held-out instruct prompts after every phase (instruction following + accuracy)."""


@dataclass
class CompareConfig:
    """``opd compare``: the TML blog's compute-efficiency protocol at this recipe's scale. The
    recipe's student is an SFT checkpoint on its SFT curve (the SFT ladder: an SFT run from
    scratch, evaluated at doubling data sizes); from it every arm trains, once per seed, until
    held-out accuracy reaches ``target_accuracy`` (eval.stop_at_accuracy) or its run.num_steps."""

    ladder: str = ""
    """Run directory (metrics.jsonl, summary.json, config.yaml) of the SFT ladder that built the
    student; empty: ``<student.path>/prepare-run``, which a prepare recipe leaves there."""
    fit_from_step: int = ranged(1, ">= 1", lambda v: v >= 1)
    """The ladder's log-linear fit (accuracy against log2 samples) uses its evals from this step
    (past the knee) to its end; its table shows the evals at doubling steps."""
    target_accuracy: float = ranged(0.5, "in (0, 1]", lambda v: 0.0 < v <= 1.0)
    """Held-out accuracy every arm trains to (the blog's 70%)."""
    also_at: List[float] = field(default_factory=list)
    """Lower accuracy levels tabulated too, from the same runs (a run stops only at the target,
    so its curve passes every lower level)."""
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    """run.seed of each arm's runs (three or more for a mean and a spread)."""
    arms: Dict[str, List[str]] = field(default_factory=dict)
    """Arm name -> key=value overrides of this recipe (objective, rollout, optim, run.num_steps
    as the step cap); the arm named ``sft_arm`` is the continued-SFT baseline."""
    sft_arm: str = "sft"
    """The continued-SFT arm the others are measured against."""
    sweep: bool = False
    """Choose each arm's optim.lr by a sweep first: one run per lr in ``sweep_lrs[arm]`` at the
    first seed; the lr that reaches the target in the fewest FLOPs (else the best accuracy)
    is used for every seed, and that run counts as the first seed's. false: the arms' lr."""
    sweep_lrs: Dict[str, List[float]] = field(default_factory=dict)
    """Arm name -> learning rates the sweep tries (recorded in compare.md either way)."""


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
    compare: CompareConfig = field(default_factory=CompareConfig)


def leaf_fields(cls: type = Config, prefix: str = "") -> Iterator[Tuple[str, Field]]:
    """Every setting as (dotted key, field), in declaration order; a section used under
    several keys is walked under each."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and is_dataclass(hint):
            yield from leaf_fields(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


CHOICES: Dict[str, Tuple[str, ...]] = {
    key: f.metadata[CHOICE] for key, f in leaf_fields() if CHOICE in f.metadata}
"""Allowed values by dotted key, from the ``choice`` fields."""

RANGES: List[Tuple[str, str, Callable[[Any], bool]]] = [
    (key, *f.metadata[RANGE]) for key, f in leaf_fields() if RANGE in f.metadata]
"""(dotted key, what is allowed, predicate) of the ``ranged`` fields, in declaration order."""
