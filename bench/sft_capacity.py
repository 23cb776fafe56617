"""Where the SFT curve bends, by student size: is the tiny task's plateau the student's capacity?

What it does: for each student shape, SFTs a randomly initialised tiny Qwen3 (HF transformers,
plain torch, no servers) on the task's reference traces at a constant learning rate (1e-3 after
30 warmup steps, AdamW, clip 1.0, 64 sequences per step, one pass over fresh problems), and
reads greedy exact-match accuracy on the 500 held-out prompts at doubling step counts (64, 128,
..., and every 512). Prints each shape's curve, its points per doubling past the knee, and the
samples each shape needs to reach 60% / 80% / 90%, as ratios to the shipped student's.

Why reference traces and not teacher samples: the question is capacity, not the teacher; the
reference is what a perfect teacher would sample (the shipped teacher is 95.8% greedy), and
sampling 4096 x 64 teacher answers through CPU SGLang would take ~100 minutes (23 ms/sample,
the ladder's record) against ~3 minutes for a shape here. The shipped student's curve here
(60.6% at 512 steps, 81.6% at 1024) tracks the ladder's on teacher samples (49.6%, 78.2%).

Run (~11 min for the four default shapes on 2 cores uncontended, 135-233 s each):
    flock /tmp/opd-heavy.lock .venv/bin/python bench/sft_capacity.py
    .venv/bin/python bench/sft_capacity.py --steps 256 --shapes student   # quick look
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from opd_megatron.data import arithmetic  # noqa: E402
from opd_megatron.models import tiny  # noqa: E402

SHAPES: Dict[str, tiny.TinyShape] = {
    "student": tiny.STUDENT_SHAPE,   # the shipped student: d96, 2 layers, ff 256 (0.21M)
    "d64-l2": tiny.TinyShape(hidden_size=64, num_layers=2, intermediate_size=128, head_dim=16),
    "d48-l2": tiny.TinyShape(hidden_size=48, num_layers=2, intermediate_size=96, head_dim=12),
    "d96-l1": tiny.STUDENT_1LAYER_SHAPE,
}
BATCH, LR, WARMUP, DATA_SEED, INIT_SEED = 64, 1.0e-3, 30, 11, 0
LEVELS = (0.6, 0.8, 0.9)


class Data:
    def __init__(self, num_heldout: int = 500):
        self.ids = tiny.vocab()
        self.pad, self.eos, self.bos = (self.ids[t] for t in (tiny.PAD, tiny.EOS, tiny.BOS))
        self.heldout = arithmetic.heldout_problems(num_heldout)
        self.stream = arithmetic.train_problems(DATA_SEED, self.heldout)

    def encode(self, text: str) -> List[int]:
        return [self.ids[c] for c in text]

    def batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Prompt + reference trace + eos; the loss on the response only."""
        problems = [next(self.stream) for _ in range(BATCH)]
        seqs = [[self.bos] + self.encode(p.prompt) + self.encode(p.solution) + [self.eos] for p in problems]
        x = torch.full((BATCH, max(map(len, seqs))), self.pad)
        labels = torch.full_like(x, -100)
        for i, (p, s) in enumerate(zip(problems, seqs)):
            start = 1 + len(p.prompt)
            x[i, :len(s)] = torch.tensor(s)
            labels[i, start:len(s)] = x[i, start:len(s)]
        return x, labels

    @torch.no_grad()
    def accuracy(self, model) -> float:
        """Greedy exact match of the final answer on the held-out prompts (left-padded batch)."""
        model.eval()
        prompts = [[self.bos] + self.encode(p.prompt) for p in self.heldout]
        width = max(map(len, prompts))
        x = torch.full((len(prompts), width), self.pad)
        mask = torch.zeros_like(x)
        for i, s in enumerate(prompts):
            x[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=40, do_sample=False,
                             pad_token_id=self.pad, eos_token_id=self.eos)
        inv = {v: k for k, v in self.ids.items()}
        right = sum(arithmetic.is_correct("".join(inv[t] for t in row if t not in (self.pad, self.eos, self.bos)),
                                          p.answer)
                    for p, row in zip(self.heldout, out[:, width:].tolist()))
        model.train()
        return right / len(self.heldout)


def curve(shape: tiny.TinyShape, steps: int) -> Tuple[int, List[Tuple[int, float]], float]:
    from transformers import Qwen3ForCausalLM

    random.seed(INIT_SEED)
    torch.manual_seed(INIT_SEED)
    data = Data()
    model = Qwen3ForCausalLM(tiny.qwen3_config(shape, vocab_size=len(data.ids)))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    t0, points = time.perf_counter(), []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, step / WARMUP)
        x, labels = data.batch()
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step >= 64 and step & (step - 1) == 0) or step % 512 == 0:
            points.append((step, data.accuracy(model)))
    return sum(p.numel() for p in model.parameters()), points, time.perf_counter() - t0


def first_reaching(points: List[Tuple[int, float]], level: float) -> Optional[int]:
    return next((s * BATCH for s, a in points if a >= level), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4096)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    results = {}
    for name in args.shapes:
        results[name] = curve(SHAPES[name], args.steps)
        params, points, secs = results[name]
        print(f"{name:8s} {params / 1e6:.3f}M params, {secs:.0f} s: "
              + "  ".join(f"{s * BATCH}:{a:.1%}" for s, a in points), flush=True)
    ref = results.get("student")
    print("\nsamples to reach each level (ratio to the shipped student's; - = not within "
          f"{args.steps * BATCH} samples); points per doubling over the last two doublings:")
    for name, (_, points, _) in results.items():
        cells = []
        for level in LEVELS:
            n = first_reaching(points, level)
            r = first_reaching(ref[1], level) if ref else None
            cells.append(f"{level:.0%}: " + ("-" if n is None else f"{n}" + (f" ({n / r:.1f}x)" if r else "")))
        doublings = [a for s, a in points if s & (s - 1) == 0]
        slope = (doublings[-1] - doublings[-3]) / 2 if len(doublings) >= 3 else float("nan")
        print(f"{name:8s} " + "  ".join(cells) + f"  slope {slope * 100:+.1f} points/doubling")


if __name__ == "__main__":
    main()
