"""The Megatron-Core learner in one process (gloo, world size 1): training step, logprob
recompute against transformers, frozen teacher, checkpoints (atomic, weights_only-loadable,
bit-exact resume), HF export, LR schedule, microbatching and bad input.

Run: .venv/bin/pytest -x -q tests/test_learner_train.py
"""

from __future__ import annotations

import math

import pytest
import torch

from opd_megatron.config.schema import ModelConfig, OptimConfig
from opd_megatron.errors import ConfigError
from tests.learner_fixtures import (
    NUM_STEPS,
    SAMPLING_TEMPERATURE,
    make_batch,
    make_learner,
    make_models,
    parallel_config,
    train_steps,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return make_models(tmp_path_factory.mktemp("learner-train"))


@pytest.fixture(scope="module")
def trained(models):
    """A TP=1 learner after NUM_STEPS steps, with its metrics."""
    learner = make_learner(models["tied"], parallel_config())
    return learner, train_steps(learner)


def _hf_logprobs(model_dir: str, batch, temperature: float) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    with torch.no_grad():
        logits = hf(batch.token_ids).logits[:, :-1] / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, batch.token_ids[:, 1:, None])[..., 0]
    lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    return lp * (batch.response_mask != 0)


def test_train_step_reports_and_learns(trained):
    learner, metrics = trained
    assert learner.step == NUM_STEPS
    assert all(math.isfinite(x) for x in metrics["losses"] + metrics["grad_norms"])
    assert metrics["grad_norms"][0] > 0
    last = learner.train_step(make_batch(0))
    for key in ("loss", "grad_norm", "lr", "num_tokens", "mismatch_abs", "ratio_mean"):
        assert key in last, key
    assert last["num_tokens"] == make_batch(0).num_tokens
    assert last["loss"] != pytest.approx(metrics["losses"][0], abs=1e-6)  # weights moved


def test_logprobs_match_transformers_at_sampling_temperature(models):
    learner = make_learner(models["untied"], parallel_config())
    batch = make_batch(3)
    ours = learner.logprobs(batch)
    ref = _hf_logprobs(models["untied"], batch, SAMPLING_TEMPERATURE)
    assert ours.shape == batch.token_ids.shape
    assert (ours - ref).abs().max().item() <= 1e-5
    assert torch.all(ours[batch.response_mask == 0] == 0)


def test_frozen_teacher_scores_like_transformers(models):
    from transformers import AutoModelForCausalLM

    from opd_megatron.learner import FrozenTeacher

    teacher = FrozenTeacher(ModelConfig(path=models["untied"]), parallel_config())
    batch = make_batch(4)
    assert (teacher.logprobs(batch) - _hf_logprobs(models["untied"], batch, 1.0)).abs().max() <= 1e-5
    hf = AutoModelForCausalLM.from_pretrained(models["untied"], dtype=torch.float32,
                                              attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(batch.token_ids).logits
    logits = teacher.logits(batch)  # aligned: logits[:, s] predicts token s
    assert logits.shape == (*batch.token_ids.shape, 21)
    cols = int(batch.response_mask.sum(0).nonzero()[-1]) + 1
    assert (logits[:, 1:cols] - ref[:, : cols - 1]).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_resume_is_bit_exact(models, tmp_path):
    k = 1
    straight = make_learner(models["tied"], parallel_config())
    train_steps(straight, k)
    straight.save_checkpoint(tmp_path / "ckpt", {"cursor": k, "note": "data"})
    train_steps(straight, NUM_STEPS - k, first_step=k)
    resumed = make_learner(models["tied"], parallel_config())
    extra = resumed.load_checkpoint(tmp_path / "ckpt")
    assert extra == {"cursor": k, "note": "data"} and resumed.step == k
    train_steps(resumed, NUM_STEPS - k, first_step=extra["cursor"])
    a, b = straight.hf_state_dict(), resumed.hf_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    fresh = make_learner(models["tied"], parallel_config()).hf_state_dict()
    assert not all(torch.equal(a[n], fresh[n]) for n in a)  # training did change weights


def test_checkpoint_is_atomic_and_weights_only(models, trained, tmp_path, monkeypatch):
    learner, _ = trained
    target = tmp_path / "ckpt"
    learner.save_checkpoint(target, {"cursor": 7})
    payload = torch.load(target / "rank_00000.pt", weights_only=True)
    assert set(payload) >= {"model", "optimizer_state", "main_params", "rng", "step", "extra"}
    assert payload["optimizer_state"][0], "Adam moments missing"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        learner.save_checkpoint(target, {"cursor": 8})
    monkeypatch.undo()
    assert torch.load(target / "rank_00000.pt", weights_only=True)["extra"] == {"cursor": 7}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "temp dir left behind"
    with pytest.raises(ConfigError, match=r"extra\['cursor'\] is a object"):
        learner.save_checkpoint(tmp_path / "other", {"cursor": object()})
    other_layout = make_learner(models["tied"], parallel_config(distributed_optimizer=False))
    with pytest.raises(ConfigError, match="different layout"):
        other_layout.load_checkpoint(target)


def test_non_finite_loss_skips_the_update(trained):
    learner, _ = trained
    before, step = learner.hf_state_dict(), learner.step
    batch = make_batch(6)
    batch.advantages[batch.response_mask != 0] = float("nan")
    metrics = learner.train_step(batch)
    assert metrics["skipped"] == 1.0 and not math.isfinite(metrics["loss"])
    after = learner.hf_state_dict()
    assert learner.step == step and all(torch.equal(before[k], after[k]) for k in before)


def test_export_hf_is_loadable_and_matches(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    learner, _ = trained
    learner.export_hf(tmp_path / "hf")
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    batch = make_batch(5)
    ref = _hf_logprobs(str(tmp_path / "hf"), batch, SAMPLING_TEMPERATURE)
    assert (learner.logprobs(batch) - ref).abs().max() <= 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").pad_token == "<pad>"
    AutoModelForCausalLM.from_pretrained(tmp_path / "hf")


def test_lr_schedule_warmup_then_cosine():
    from opd_megatron.learner.schedule import lr_at

    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4, schedule="cosine")
    rates = [lr_at(s, optim, 12) for s in range(13)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == 1.0 and rates[12] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))
    const = OptimConfig(lr=0.5, warmup_steps=0, schedule="constant")
    assert {lr_at(s, const, 5) for s in range(5)} == {0.5}


def test_microbatches_respect_budget_and_cover_every_row():
    from opd_megatron.learner.microbatch import norm_count, split_microbatches

    batch = make_batch(0, num_rows=7)
    shards = [split_microbatches(batch, microbatch_tokens=50, dp=2, dp_rank=r) for r in (0, 1)]
    shapes = {tuple(mb.token_ids.shape) for mbs in shards for mb in mbs}
    assert shapes == {(2, 24)}  # one shape for every microbatch; 2 rows * 24 <= 50 tokens
    total = sum(norm_count(mb.response_mask, "token_mean") for mbs in shards for mb in mbs)
    assert total == norm_count(batch.response_mask, "token_mean")
    rows = torch.cat([mb.token_ids for mbs in shards for mb in mbs])
    real = rows[rows.ne(0).any(1)]
    assert sorted(map(tuple, real.tolist())) == sorted(map(tuple, batch.token_ids.tolist()))


def test_bad_input_is_a_config_error(models, tmp_path):
    with pytest.raises(ConfigError, match="world size"):
        make_learner(models["tied"], parallel_config(tp=2))
    with pytest.raises(ConfigError, match="config.json"):
        make_learner(str(tmp_path / "missing"), parallel_config())


def test_cpu_device_mode_is_scoped_to_learner_calls():
    from opd_megatron.learner import cpu_compat

    if torch.cuda.is_available():
        pytest.skip("CPU compatibility layer is inactive with CUDA")
    with cpu_compat.cpu_mode():
        assert torch.zeros(2, device="cuda").device.type == "cpu"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")
