"""The Megatron-Core learner: a Qwen3 GPTModel under Megatron DDP with the distributed
optimizer, trained one TrainBatch per ``train_step``.

Every method is collective: under torchrun all ranks call it with the same full batch (the
loop is SPMD). Each DP rank trains on its slice of rows, in microbatches of about
``parallel.microbatch_tokens`` tokens; the loss is the objective's
(``opd_megatron.objective.compute_loss``) global mean over the whole batch, so TP/PP/DP and
microbatch size leave the loss unchanged. fp32 on CPU; ``model.dtype`` (bf16) on GPU, where the
optimizer keeps fp32 master weights.

With ``lora`` (rank > 0) the loaded weights are frozen and only LoRA adapters train
(``learner/lora.py``); ``hf_state_dict`` / ``export_hf`` return the merged weights, so the
serving engines and HF exports see a plain model.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from opd_megatron.config.schema import (LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig,
                                         ParallelConfig)
from opd_megatron import faults
from opd_megatron.errors import ConfigError
from opd_megatron.learner import checkpoint as ckpt
from opd_megatron.learner import cpu_compat
from opd_megatron.learner import lora as lora_lib
from opd_megatron.learner.forward import real_vocab_logits, run_schedule, tp_group_or_none
from opd_megatron.learner.hf_io import load_hf_weights, save_hf_dir
from opd_megatron.learner.microbatch import norm_count
from opd_megatron.learner.parallel import device, init_parallel
from opd_megatron.learner.qwen3 import Qwen3Arch, build_gpt_model, pad_token_id, read_hf_config
from opd_megatron.learner.schedule import lr_at
from opd_megatron.learner.scoring import Scorer
from opd_megatron.learner.weights import gather_hf, load_hf_into, local_state, unwrap
from opd_megatron.objective import compute_loss
from opd_megatron.types import TrainBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(model: ModelConfig) -> torch.dtype:
    """fp32 on CPU whatever the config says (CPU bf16 matmuls are slow and inexact);
    ``model.dtype`` on GPU."""
    if model.dtype not in _DTYPES:
        raise ConfigError(f"model dtype {model.dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[model.dtype] if torch.cuda.is_available() else torch.float32


def _merge_metrics(reports: List[dict]) -> Dict[str, float]:
    """Count-weighted means of per-microbatch metrics; *_min / *_max reduce by min / max."""
    total = sum(r["count"] for r in reports)
    out: Dict[str, float] = {}
    keys = sorted({k for r in reports for k in r["metrics"]})
    for key in keys:
        vals = [(r["metrics"][key], r["count"]) for r in reports if key in r["metrics"]]
        if key.endswith("_min"):
            out[key] = min(v for v, _ in vals)
        elif key.endswith("_max"):
            out[key] = max(v for v, _ in vals)
        else:
            out[key] = sum(v * c for v, c in vals) / max(total, 1)
    return out


class Learner(Scorer):
    """Megatron-Core student trainer (see the module docstring)."""

    @cpu_compat.scoped
    def __init__(self, model: ModelConfig, objective: ObjectiveConfig, optim: OptimConfig,
                 parallel: ParallelConfig, *, num_steps: int, seed: int,
                 sampling_temperature: float = 1.0, lora: Optional[LoraConfig] = None,
                 num_tokens: int = 0, use_te: Optional[bool] = None):
        from megatron.core.distributed import DistributedDataParallel, finalize_model_grads

        self.model_cfg, self.objective, self.optim, self.parallel = model, objective, optim, parallel
        self.num_steps, self.seed, self.temperature = num_steps, seed, sampling_temperature
        self.lora = lora if lora is not None and lora.rank > 0 else None
        self.hf_config = read_hf_config(model.path)
        self.arch = Qwen3Arch.from_hf(self.hf_config, f"{model.path}/config.json")
        self.pad_id = pad_token_id(self.hf_config)
        self.num_tokens = num_tokens
        self.microbatch_tokens = parallel.microbatch_tokens
        self.dtype = compute_dtype(model)
        self.ranks = init_parallel(parallel, seed)
        gpt = build_gpt_model(self.arch, tp=parallel.tp, pp=parallel.pp, dtype=self.dtype,
                              use_te=use_te)
        load_hf_into(gpt, load_hf_weights(model.path), self.arch, self.ranks)
        if self.lora is not None:
            lora_lib.apply_lora(gpt, self.lora, seed=seed, tp=self.ranks.tp,
                                tp_rank=self.ranks.tp_rank)
        self.model = DistributedDataParallel(
            config=gpt.config, ddp_config=self._ddp_config(), module=gpt)
        gpt.config.finalize_model_grads_func = finalize_model_grads
        gpt.config.no_sync_func = self.model.no_sync
        self.optimizer = self._build_optimizer()
        self.step = 0
        self._calls = 0  # train_step calls, skipped ones included (the fault hooks count these)

    def _ddp_config(self):
        from megatron.core.distributed import DistributedDataParallelConfig

        # average_in_collective must be off in per-token-loss mode: Megatron divides by the
        # global token count itself (see microbatch.py).
        return DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, overlap_param_gather=False,
            use_distributed_optimizer=self.parallel.distributed_optimizer,
            average_in_collective=False, check_for_nan_in_grad=False)

    def _build_optimizer(self):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        o = self.optim
        cfg = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
            adam_beta1=o.beta1, adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.grad_clip,
            bf16=self.dtype == torch.bfloat16, fp16=self.dtype == torch.float16,
            params_dtype=self.dtype, use_distributed_optimizer=self.parallel.distributed_optimizer)
        with cpu_compat.cuda_tensor_types():
            return get_megatron_optimizer(cfg, [self.model])

    # ----- training --------------------------------------------------------------------------
    def _loss_fn(self, mb: TrainBatch, logits: torch.Tensor):
        """Megatron loss_func: (loss summed over norm units, their count, report)."""
        logits = real_vocab_logits(logits, self.token_width, self.ranks)
        count = norm_count(mb.response_mask[:, 1:], self.objective.loss_norm)
        if count == 0:  # all-filler microbatch: no loss, but keep the graph connected
            loss, metrics = logits.sum() * 0.0, {}
        else:
            loss, metrics = compute_loss(self.objective, logits, _to_device(mb),
                                         temperature=self.temperature,
                                         tp_group=tp_group_or_none(self.ranks))
        if faults.poisoned("loss_nan", self._calls):
            loss = loss * float("nan")
        loss_sum = loss * count
        report = {"loss_sum": float(loss_sum.detach()), "count": count, "metrics": metrics}
        return loss_sum, torch.tensor(count, dtype=torch.int, device=device()), report

    def _global_reports(self, reports: List[dict]) -> List[dict]:
        """Every DP rank's last-stage microbatch reports, on every rank."""
        from megatron.core import parallel_state as ps

        if self.ranks.dp > 1 and self.ranks.is_last_stage:
            gathered: List[List[dict]] = [None] * self.ranks.dp  # type: ignore[list-item]
            dist.all_gather_object(gathered, reports, group=ps.get_data_parallel_group())
            reports = [r for part in gathered for r in part]
        if self.ranks.pp > 1:
            holder = [reports]
            dist.broadcast_object_list(holder, src=ps.get_pipeline_model_parallel_last_rank(),
                                       group=ps.get_pipeline_model_parallel_group())
            reports = holder[0]
        return reports

    @cpu_compat.scoped
    def train_step(self, batch: TrainBatch) -> Dict[str, float]:
        """One optimizer step on ``batch``. Returns loss, grad_norm, lr, num_tokens, the
        objective's metrics (mismatch, ratios, ...) and skipped (1.0 if the loss or a gradient
        was not finite, on any rank, or the optimizer refused the step: then no update is applied
        and the step counter does not advance)."""
        self._calls += 1
        lr = lr_at(self.step, self.optim, self.num_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = run_schedule(self.model, self._microbatches(batch), self._loss_fn,
                               forward_only=False)
        reports = [r for r in self._global_reports(list(reports)) if isinstance(r, dict)]
        total = sum(r["count"] for r in reports)
        loss = sum(r["loss_sum"] for r in reports) / max(total, 1)
        metrics = _merge_metrics([r for r in reports if r["metrics"]])
        metrics.update(loss=loss, lr=lr, num_tokens=float(batch.num_tokens), skipped=0.0)
        if faults.poisoned("grad_inf", self._calls):
            next(self._grads()).view(-1)[0] = float("inf")
        if not math.isfinite(loss) or not self._grads_finite():
            self.optimizer.zero_grad()
            metrics.update(skipped=1.0, grad_norm=float("nan"))
            return metrics
        ok, grad_norm, _ = self.optimizer.step()
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        if not ok:
            metrics["skipped"] = 1.0
            return metrics
        self.step += 1
        return metrics

    # ----- weights out -------------------------------------------------------------------------
    @cpu_compat.scoped
    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        """Full HF-named weights on global rank 0 ({} on other ranks). Collective. With LoRA:
        the merged weights W + alpha/r * B @ A."""
        state = None
        if self.lora is not None:
            state = lora_lib.merged_state(unwrap(self.model), local_state(self.model))
        return gather_hf(self.model, self.arch, self.ranks, state=state)

    def _grads(self):
        """This rank's gradients of the trainable parameters (Megatron keeps them in main_grad)."""
        for p in self.model.parameters():
            if p.requires_grad:
                g = getattr(p, "main_grad", None)
                g = p.grad if g is None else g
                if g is not None:
                    yield g

    def _grads_finite(self) -> bool:
        """Every gradient on every rank is finite (one flag summed over all ranks: they agree)."""
        bad = torch.zeros((), device=device())
        for g in self._grads():
            bad += (~torch.isfinite(g)).any()  # on the device: one sync below, not one per tensor
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad)
        return float(bad) == 0.0

    def num_trainable_params(self) -> int:
        """Parameters the optimizer steps on this rank's model shard (adapters under LoRA)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @cpu_compat.scoped
    def export_hf(self, out_dir) -> None:
        """Write the student as an HF directory (config, model.safetensors, tokenizer files
        copied from the source), atomically. Collective; rank 0 writes."""
        weights = self.hf_state_dict()
        if dist.get_rank() == 0:
            sources = [self.model_cfg.path] + ([self.model_cfg.tokenizer]
                                               if self.model_cfg.tokenizer else [])
            save_hf_dir(out_dir, weights, self.hf_config, source_dirs=sources)
        dist.barrier()

    # ----- checkpoints -------------------------------------------------------------------------
    @cpu_compat.scoped
    def save_checkpoint(self, ckpt_dir, extra: dict) -> None:
        """Model, optimizer, RNG, step and ``extra`` (the loop's data cursor), atomically."""
        ckpt.save(ckpt_dir, model=self.model, optimizer=self.optimizer, step=self.step,
                  extra=extra, layout=self._layout())

    @cpu_compat.scoped
    def load_checkpoint(self, ckpt_dir) -> dict:
        """Restore everything ``save_checkpoint`` wrote; returns its ``extra``."""
        self.step, extra = ckpt.load(ckpt_dir, model=self.model, optimizer=self.optimizer,
                                     layout=self._layout())
        return extra

    def _layout(self) -> dict:
        r = self.ranks
        layout = {"tp": r.tp, "pp": r.pp, "dp": r.dp, "dtype": str(self.dtype),
                  "distributed_optimizer": self.parallel.distributed_optimizer}
        if self.lora is not None:  # absent without LoRA, so older checkpoints still resume
            layout.update(lora_rank=self.lora.rank, lora_alpha=self.lora.alpha,
                          lora_targets=list(self.lora.targets))
        return layout

    def logprobs(self, batch: TrainBatch, *, temperature: float | None = None) -> torch.Tensor:
        """[B, S] learner logprobs at the sampling temperature (see scoring.Scorer)."""
        return super().logprobs(batch, temperature=self.temperature if temperature is None
                                else temperature)


def _to_device(mb: TrainBatch) -> TrainBatch:
    import dataclasses

    dev = device()
    if dev.type == "cpu":
        return mb
    return dataclasses.replace(mb, **{f.name: getattr(mb, f.name).to(dev)
                                      for f in dataclasses.fields(mb)
                                      if isinstance(getattr(mb, f.name), torch.Tensor)})
