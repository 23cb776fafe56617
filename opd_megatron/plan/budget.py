"""The plan on paper: memory per GPU and time per step, from a model's shape and the recipe.

Pure arithmetic (no torch), so ``opd validate`` runs it on a login node with no weights
present. Every figure is an estimate with its assumptions stated here and in the plan's text:

Learner, per GPU (Megatron, tp x pp x dp, no sequence parallelism, no activation recompute):
  weights     P x bytes(dtype) / (tp pp)
  gradients   P_trained x 4 / (tp pp)                fp32 main grads
  optimizer   P_trained x 12 / (tp pp) [/ dp]        fp32 master + Adam m, v (8 at fp32 weights);
                                                     / dp with the distributed optimizer
  activations microbatch_tokens x L x A              A: bytes a token keeps per layer for the
                                                     backward (below); 1F1B keeps pp microbatches
                                                     of L/pp layers in flight, so L x A at any pp
  logits      microbatch_tokens x V/tp x (bytes + 8) the output row, its fp32 log-softmax and grad
where A = bytes x (4h + (2 d_attn + 2 kv + 3 ffn) / tp): the two norms' and the two matmul
blocks' inputs (h each, replicated over tp without sequence parallelism), q, k, v and the
attention output (flash attention keeps no scores), SwiGLU's gate, up and product. P_trained is
the LoRA adapters' count when ``lora.rank`` > 0, else P. A teacher inside the learner
(``objective.teacher_backend=megatron``) adds its weights.

Servers, per GPU: weights P x bytes / tp; the KV cache gets what is left of
``mem_fraction`` x GPU memory, 2 L kv bytes / tp per token.

Time per step (the synchronous loop: sampling, then teacher scoring, then training): each
stage's upper-bound FLOPs (``plan.describe.flops_per_step``) over its GPUs x the profile's peak
x an MFU the user states (``opd validate --mfu``; sampling is decode, memory-bound, so it gets
its own, lower ``--sampling-mfu``). GPU-hours count every GPU of the job for the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from opd_megatron.models.shape import ModelShape

GIB = 1024**3
BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2}
LEARNER_MEMORY_FRACTION = 0.9
"""Share of a GPU the learner may plan to use (the rest: CUDA context, allocator slack)."""
DEFAULT_MFU = 0.4
DEFAULT_SAMPLING_MFU = 0.1

# What the published runs cost, printed beside the plan's estimate.
REFERENCES = (
    "Qwen3 report Table 21: on-policy distillation of Qwen3-8B from Qwen3-32B, 1,800 GPU-hours "
    "(RL from the same start: 17,920)",
    "TML blog: OPD of Qwen3-8B-Base, 150 steps x 512 prompts x 4 samples x ~4K tokens: "
    "teacher 8.4e19 + student 8.2e19 FLOPs (teacher counted as Qwen3-32B)",
)


def activation_bytes_per_token_layer(shape: ModelShape, tp: int, dtype: str) -> float:
    """A: what one token keeps per layer for the backward pass (module docstring)."""
    h, kv = shape.hidden_size, shape.num_kv_heads * shape.head_dim
    split = 2 * shape.d_attn + 2 * kv + 3 * shape.intermediate_size
    return BYTES_PER_DTYPE[dtype] * (4 * h + split / tp)


@dataclass(frozen=True)
class LearnerMemory:
    """GiB per GPU, by part."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    teacher_weights: float = 0.0

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits
                + self.teacher_weights)

    def describe(self) -> str:
        parts = [("weights", self.weights), ("grads", self.gradients), ("optimizer", self.optimizer),
                 ("activations", self.activations), ("logits", self.logits)]
        if self.teacher_weights:
            parts.append(("teacher weights", self.teacher_weights))
        return f"{self.total:.1f} GiB = " + " + ".join(f"{name} {v:.1f}" for name, v in parts)


def learner_memory(shape: ModelShape, *, tp: int, pp: int, dp: int, microbatch_tokens: int,
                   dtype: str, distributed_optimizer: bool, trained_params: Optional[int] = None,
                   teacher: Optional[ModelShape] = None, teacher_dtype: str = "bfloat16") -> LearnerMemory:
    """The learner's memory per GPU (module docstring); ``trained_params`` None: all of them."""
    wbytes = BYTES_PER_DTYPE[dtype]
    trained = shape.total_params if trained_params is None else trained_params
    model_split = tp * pp
    master = 12 if wbytes < 4 else 8
    optimizer = trained * master / model_split / (dp if distributed_optimizer else 1)
    act = microbatch_tokens * shape.num_layers * activation_bytes_per_token_layer(shape, tp, dtype)
    logits = microbatch_tokens * shape.vocab_size / tp * (wbytes + 8)
    teacher_w = (teacher.total_params * BYTES_PER_DTYPE[teacher_dtype] / model_split) if teacher else 0.0
    return LearnerMemory(weights=shape.total_params * wbytes / model_split / GIB,
                         gradients=trained * 4 / model_split / GIB, optimizer=optimizer / GIB,
                         activations=act / GIB, logits=logits / GIB, teacher_weights=teacher_w / GIB)


@dataclass(frozen=True)
class ServerMemory:
    weights: float
    """GiB per GPU."""
    kv_cache: float
    """GiB per GPU left for the KV cache (negative: the weights alone do not fit)."""
    kv_tokens: int
    """Tokens that KV cache holds (over the server's tp GPUs)."""


def server_memory(shape: ModelShape, *, tp: int, dtype: str, gpu_memory_gib: float,
                  mem_fraction: float) -> ServerMemory:
    wbytes = BYTES_PER_DTYPE[dtype]
    weights = shape.total_params * wbytes / tp / GIB
    kv = mem_fraction * gpu_memory_gib - weights
    per_token = shape.kv_values_per_token * wbytes / tp
    return ServerMemory(weights, kv, max(0, int(kv * GIB / per_token)))


# Which GPUs run each FLOPs role of a step.
STAGE_GPUS = {"student_sampling": "student", "teacher_sampling": "teacher",
              "teacher_scoring": "teacher", "learner_train": "learner"}


def step_seconds(flops: Dict[str, float], gpus: Dict[str, int], peak_tflops: float, *,
                 mfu: float = DEFAULT_MFU, sampling_mfu: float = DEFAULT_SAMPLING_MFU) -> Dict[str, float]:
    """Seconds per stage of one step and their sum (``total``); ``gpus``: GPUs by group
    (student, teacher, learner). Stages a step does not run are left out."""
    out: Dict[str, float] = {}
    for role, group in STAGE_GPUS.items():
        if not flops.get(role):
            continue
        rate = (sampling_mfu if role.endswith("_sampling") else mfu) * peak_tflops * 1e12
        out[role] = flops[role] / (gpus[group] * rate)
    out["total"] = sum(out.values())
    return out


def gpu_hours(step_s: float, num_steps: int, job_gpus: int) -> float:
    """Every GPU of the job is held for the whole step."""
    return step_s * num_steps * job_gpus / 3600.0


__all__ = ["LearnerMemory", "ServerMemory", "learner_memory", "server_memory", "step_seconds",
           "gpu_hours", "activation_bytes_per_token_layer", "REFERENCES", "DEFAULT_MFU",
           "DEFAULT_SAMPLING_MFU", "LEARNER_MEMORY_FRACTION", "BYTES_PER_DTYPE", "GIB"]
