"""The generated task, the char tokenizer, prompt streams and per-token batch alignment."""

from __future__ import annotations

import random

import pytest
import torch

from opd_megatron.config.schema import DataConfig
from opd_megatron.data import PromptSource, heldout_prompts
from opd_megatron.data import arithmetic
from opd_megatron.types import Rollout


def _eval_mod(expr: str) -> int:
    """Independent reference: multiplication first, then left to right, every step mod 100."""
    tokens = list(expr)
    nums, ops = [int(t) for t in tokens[0::2]], tokens[1::2]
    stack, pending = [nums[0]], []
    for op, n in zip(ops, nums[1:]):
        if op == "*":
            stack[-1] = stack[-1] * n % 100
        else:
            pending.append(op)
            stack.append(n)
    acc = stack[0]
    for op, n in zip(pending, stack[1:]):
        acc = (acc + n) % 100 if op == "+" else (acc - n) % 100
    return acc


def test_solver_matches_reference_and_example():
    p = arithmetic.solve("8-1*5*6")
    assert (p.prompt, p.solution, p.answer) == ("8-1*5*6=", "1*5=5;5*6=30;8-30=78;#78", "78")
    rng = random.Random(0)
    for _ in range(2000):
        p = arithmetic.random_problem(rng, 2, 4)
        assert int(p.answer) == _eval_mod(p.prompt[:-1])
        assert arithmetic.is_correct(p.solution, p.answer)


def test_heldout_is_fixed_and_never_trained_on():
    held = arithmetic.heldout_problems(500)
    assert held == arithmetic.heldout_problems(500) and len({p.prompt for p in held}) == 500
    stream = arithmetic.train_problems(3, held)
    banned = {p.prompt for p in held}
    assert not any(next(stream).prompt in banned for _ in range(5000))


def test_prompt_cursor_resumes_the_same_stream():
    data = DataConfig()
    a = PromptSource(data, seed=5)
    first = a.take(10) + a.take(7)
    b = PromptSource(data, seed=5, cursor=10)
    assert b.take(7) == first[10:]
    assert heldout_prompts(data, 3)[0].answer is not None


def test_grading():
    assert arithmetic.is_correct("1+2=3;#3<eos>", "3")
    assert not arithmetic.is_correct("1+2=3;", "3")
    assert not arithmetic.is_correct("#4", "3")


def test_char_tokenizer_round_trip(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    text = "8-1*5*6=1*5=5;5*6=30;8-30=78;#78"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0


def test_pack_rollouts_aligns_response_tokens():
    from opd_megatron.objective.batching import pack_rollouts

    r1 = Rollout(prompt_ids=[5, 6, 7], response_ids=[8, 9], sampler_logprobs=[-0.1, -0.2],
                 teacher_logprobs=[-1.0, -2.0], group_id=0)
    r2 = Rollout(prompt_ids=[5], response_ids=[4, 3, 1], sampler_logprobs=[-0.3, -0.4, -0.5],
                 teacher_logprobs=[-3.0, -4.0, -5.0], group_id=1)
    b = pack_rollouts([r1, r2], pad_id=0)
    assert b.token_ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 1, 0]]
    assert b.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    # entry [b, s] refers to token_ids[b, s]
    assert b.sampler_logprobs[0, 3].item() == pytest.approx(-0.1)
    assert b.teacher_logprobs[1, 3].item() == pytest.approx(-5.0)
    assert b.num_tokens == 5
    assert torch.equal(b.group_ids, torch.tensor([0, 1]))
