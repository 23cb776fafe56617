"""Learner training throughput: the Megatron-Core learner vs HF transformers training the same
tiny Qwen3 on the same batch, side by side in one process, as tokens/s and their ratio.

    flock /tmp/opd-heavy.lock .venv/bin/python bench/learner_throughput.py [--rows 32] [--seq-len 64]

Both sides run the same SFT objective (token NLL, token mean), Adam, grad clip 1.0, fp32, one
microbatch. Rounds alternate between the two so a shared, noisy CPU slows both alike; the
median round is reported. Trained tokens = response tokens of the batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opd_megatron.config.schema import (  # noqa: E402
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    ParallelConfig,
)
from opd_megatron.models.tiny import TEACHER_SHAPE, save_random_model  # noqa: E402
from opd_megatron.types import TrainBatch  # noqa: E402

LR = 1e-3


def make_batch(rows: int, seq_len: int, vocab: int) -> TrainBatch:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (rows, seq_len), generator=gen)
    mask = torch.zeros(rows, seq_len)
    mask[:, seq_len // 4:] = 1.0
    zeros = torch.zeros(rows, seq_len)
    return TrainBatch(token_ids=tokens, response_mask=mask, sampler_logprobs=zeros,
                      advantages=zeros)


def hf_trainer(model_dir: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               microbatch_rows: int = 0):
    """A plain HF training step with the same loss and optimizer settings: the token NLL of
    microbatches of ``microbatch_rows`` rows (0: the whole batch at once), each divided by the
    whole batch's token count, so the gradients add up to the learner's global token mean."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), eps=1e-8,
                            weight_decay=0.0)

    def step(batch: TrainBatch) -> float:
        tokens, mask = batch.token_ids.to(device), batch.response_mask[:, 1:].to(device)
        rows = microbatch_rows or len(tokens)
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for r0 in range(0, len(tokens), rows):
            ids, mb_mask = tokens[r0:r0 + rows], mask[r0:r0 + rows]
            logits = model(ids).logits[:, :-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
            mb_loss = -(logp * mb_mask).sum() / mask.sum()
            mb_loss.backward()
            loss += mb_loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    return step


def timed(step, batch, num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
        step(batch)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=5)
    args = parser.parse_args()

    from opd_megatron.learner import Learner

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(save_random_model(Path(tmp) / "m", TEACHER_SHAPE, seed=0))
        batch = make_batch(args.rows, args.seq_len, vocab=21)
        learner = Learner(ModelConfig(path=model_dir), ObjectiveConfig(method="sft"),
                          OptimConfig(lr=LR, warmup_steps=0, grad_clip=1.0),
                          ParallelConfig(microbatch_tokens=args.rows * args.seq_len),
                          num_steps=10_000, seed=0)
        hf_step = hf_trainer(model_dir)
        for _ in range(2):  # warm up both (allocator, first-call overheads)
            learner.train_step(batch)
            hf_step(batch)
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(timed(learner.train_step, batch, args.steps_per_round))
            theirs.append(timed(hf_step, batch, args.steps_per_round))
    tokens = batch.num_tokens * args.steps_per_round
    ours_tps, theirs_tps = tokens / statistics.median(ours), tokens / statistics.median(theirs)
    print(f"model: tiny Qwen3 d{TEACHER_SHAPE.hidden_size} x{TEACHER_SHAPE.num_layers} layers; "
          f"batch {args.rows} x {args.seq_len}, {batch.num_tokens} trained tokens/step; "
          f"torch threads {torch.get_num_threads()}")
    print(f"megatron learner : {ours_tps:10.0f} tokens/s (median of {args.rounds} rounds)")
    print(f"hf transformers  : {theirs_tps:10.0f} tokens/s")
    print(f"ratio learner/hf : {ours_tps / theirs_tps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
