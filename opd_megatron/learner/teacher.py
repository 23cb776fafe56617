"""A frozen teacher inside Megatron (``objective.teacher_backend=megatron``).

A second GPTModel in the learner's process grid that only scores batches: it removes the
engine-vs-trainer logprob mismatch of scoring with SGLang, at the cost of holding the teacher
in the training job. Its parameters never require grad and it has no optimizer.
"""

from __future__ import annotations

from opd_megatron.config.schema import ModelConfig, ParallelConfig
from opd_megatron.learner import cpu_compat
from opd_megatron.learner.hf_io import load_hf_weights
from opd_megatron.learner.learner import compute_dtype
from opd_megatron.learner.parallel import init_parallel
from opd_megatron.learner.qwen3 import Qwen3Arch, build_gpt_model, pad_token_id, read_hf_config
from opd_megatron.learner.scoring import Scorer
from opd_megatron.learner.weights import load_hf_into


class FrozenTeacher(Scorer):
    """``.logprobs(batch, temperature=)`` [B, S] and ``.logits(batch)`` [B, S, V], aligned as
    TrainBatch fields (entry [b, s] is about token_ids[b, s]); collective, same on every rank."""

    @cpu_compat.scoped
    def __init__(self, model_cfg: ModelConfig, parallel: ParallelConfig, *, seed: int = 0,
                 num_tokens: int = 0):
        self.hf_config = read_hf_config(model_cfg.path)
        self.arch = Qwen3Arch.from_hf(self.hf_config, f"{model_cfg.path}/config.json")
        self.pad_id = pad_token_id(self.hf_config)
        self.num_tokens = num_tokens
        self.microbatch_tokens = parallel.microbatch_tokens
        self.ranks = init_parallel(parallel, seed)  # reuses the learner's groups if present
        self.model = build_gpt_model(self.arch, tp=parallel.tp, pp=parallel.pp,
                                     dtype=compute_dtype(model_cfg))
        load_hf_into(self.model, load_hf_weights(model_cfg.path), self.arch, self.ranks)
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.eval()
