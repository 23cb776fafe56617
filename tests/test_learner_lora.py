"""LoRA on the Megatron learner (gloo, world size 1): rank 0 is the plain learner, a fresh
adapter changes nothing, a step moves only the adapters, the merged weights (what weight
sync pushes and export writes) give the adapter learner's logprobs in transformers and in a
real SGLang server, TP=2 and PP=2 (torchrun) train like one rank, and a LoRA checkpoint resumes bit-exact.

Run: PYTHONHASHSEED=0 .venv/bin/pytest -q tests/test_learner_lora.py   (~1 min: one server)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opd_megatron.config.schema import LoraConfig, ModelConfig, OptimConfig
from opd_megatron.errors import ConfigError
from tests.learner_fixtures import (
    NUM_STEPS,
    OBJECTIVE,
    SAMPLING_TEMPERATURE,
    make_batch,
    make_learner,
    make_models,
    parallel_config,
    train_steps,
)

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
LORA = LoraConfig(rank=4, alpha=8.0)
FAST = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant", grad_clip=1.0)
"""A large LR so a few steps move the adapters well past the comparison tolerances."""
FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return make_models(tmp_path_factory.mktemp("learner-lora"))


def lora_learner(model_dir: str, lora: LoraConfig = LORA, optim: OptimConfig = FAST, seed: int = 5,
                 **parallel):
    from opd_megatron.learner import Learner

    return Learner(ModelConfig(path=model_dir), OBJECTIVE, optim, parallel_config(**parallel),
                   num_steps=NUM_STEPS, seed=seed, sampling_temperature=SAMPLING_TEMPERATURE,
                   lora=lora)


def _params(learner) -> dict:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(models):
    """A LoRA learner on the untied model after NUM_STEPS steps, and its weights before."""
    learner = lora_learner(models["untied"])
    before = _params(learner)
    train_steps(learner)
    return learner, before


def test_rank_zero_is_the_plain_learner(models):
    plain = make_learner(models["tied"], parallel_config())
    off = lora_learner(models["tied"], LoraConfig(rank=0), optim=plain.optim)
    assert off.lora is None and set(_params(off)) == set(_params(plain))
    assert train_steps(off, 2) == train_steps(plain, 2)
    assert _same(off.hf_state_dict(), plain.hf_state_dict())


def test_fresh_adapter_leaves_the_model_unchanged(models):
    plain = make_learner(models["untied"], parallel_config())
    fresh = lora_learner(models["untied"])
    batch = make_batch(2)
    assert torch.equal(fresh.logits(batch), plain.logits(batch))  # B = 0: exactly the base
    assert _same(fresh.hf_state_dict(), plain.hf_state_dict())
    again = lora_learner(models["untied"])  # seeded A: the same adapters every time
    assert _same(_params(again), _params(fresh))
    other_seed = lora_learner(models["untied"], seed=6)
    assert not _same(_params(other_seed), _params(fresh))


def test_a_step_trains_only_the_adapters(trained):
    from opd_megatron.learner.checkpoint import _inner_optimizers

    learner, before = trained
    after = _params(learner)
    adapters = {n for n in after if ".lora." in n}
    assert adapters and {n for n, p in learner.model.named_parameters() if p.requires_grad} == adapters
    assert len(adapters) == 2 * 4 * 2  # A and B x 4 targets x 2 layers
    for name in after:
        if name in adapters:
            assert not torch.equal(after[name], before[name]), name
        else:
            assert torch.equal(after[name], before[name]), name  # the frozen base never moves
    stepped = sum(p.numel() for opt in _inner_optimizers(learner.optimizer)
                  for g in opt.param_groups for p in g["params"])
    assert stepped == learner.num_trainable_params() == sum(after[n].numel() for n in adapters)
    total = sum(p.numel() for p in after.values())
    assert learner.num_trainable_params() < 0.15 * total


def test_flops_account_matches_torch_counter_for_lora_and_full(models):
    """The account's training FLOPs equal torch's FLOP counter on a real train step, for full
    fine-tuning (6N + 3x attention) and LoRA (4N + 6 N_lora + 3x attention less the first
    layer's input gradient): the LoRA step costs 0.74x the FLOPs of the full one here."""
    from torch.utils.flop_counter import FlopCounterMode

    from opd_megatron.plan.flops import lora_params, resolve_shape, train_flops_per_token

    shape = resolve_shape(models["untied"])
    batch = make_batch(0)
    rows, length = batch.token_ids.shape  # the learner runs whole padded rows; no causal skip
    measured = {}
    for name, learner in [("full", make_learner(models["untied"], parallel_config())),
                          ("lora", lora_learner(models["untied"]))]:
        with FlopCounterMode(display=False) as counter:
            learner.train_step(batch)
        measured[name] = counter.get_total_flops()
        if name == "lora":
            assert learner.num_trainable_params() == lora_params(shape, LORA.rank, LORA.targets)
    predicted = {"full": train_flops_per_token(shape, length) * rows * length,
                 "lora": train_flops_per_token(shape, length, LORA.rank, LORA.targets) * rows * length}
    print(f"measured {measured}, account {predicted}, lora/full {measured['lora'] / measured['full']:.3f}")
    assert measured == {k: int(v) for k, v in predicted.items()}
    assert measured["lora"] < 0.8 * measured["full"]


def test_merged_weights_give_the_adapter_logprobs(trained, models, tmp_path):
    """The merged export in transformers, and in a fresh learner without LoRA."""
    from tests.test_learner_train import _hf_logprobs

    learner, _ = trained
    batch = make_batch(5)
    ours = learner.logprobs(batch)
    merged = learner.hf_state_dict()
    base = make_learner(models["untied"], parallel_config())
    assert not any(".lora" in k for k in merged)
    assert (ours - base.logprobs(batch)).abs().max() > 1e-2  # the adapters did learn something
    learner.export_hf(tmp_path / "hf")
    hf_diff = (ours - _hf_logprobs(str(tmp_path / "hf"), batch, SAMPLING_TEMPERATURE)).abs().max()
    plain = make_learner(str(tmp_path / "hf"), parallel_config())
    plain_diff = (learner.logits(batch) - plain.logits(batch)).abs().max()
    print(f"merged vs adapters: transformers logprobs {hf_diff:.2e}, learner logits {plain_diff:.2e}")
    assert hf_diff <= 1e-5 and plain_diff <= 1e-5


def test_resume_is_bit_exact_with_lora(models, tmp_path):
    straight = lora_learner(models["tied"])
    train_steps(straight, 1)
    straight.save_checkpoint(tmp_path / "ckpt", {"cursor": 1})
    train_steps(straight, NUM_STEPS - 1, first_step=1)
    resumed = lora_learner(models["tied"], seed=99)  # different initial A: the checkpoint wins
    assert resumed.load_checkpoint(tmp_path / "ckpt") == {"cursor": 1} and resumed.step == 1
    train_steps(resumed, NUM_STEPS - 1, first_step=1)
    assert _same(_params(straight), _params(resumed))
    assert _same(straight.hf_state_dict(), resumed.hf_state_dict())
    with pytest.raises(ConfigError, match="different layout"):
        lora_learner(models["tied"], LoraConfig(rank=2)).load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="model weights do not match"):
        make_learner(models["tied"], parallel_config()).load_checkpoint(tmp_path / "ckpt")


LORA_LAYOUTS = {"tp2": dict(tp=2), "pp2": dict(pp=2)}
"""Layouts the torchrun worker (tests/learner_lora_parallel_worker.py) trains in turn."""


@pytest.fixture(scope="module")
def parallel_runs(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora-parallel")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         str(REPO / "tests" / "learner_lora_parallel_worker.py"), models["tied"], str(out)],
        env=env, capture_output=True, text=True, timeout=500, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.parametrize("layout", list(LORA_LAYOUTS))
def test_parallel_layouts_match_tp1(models, parallel_runs, layout):
    """TP=2: column-parallel B / row-parallel A sharded like W, the adapter's TP communication
    and its grad-norm attributes; PP=2: adapters on each stage's own layers, merged weights
    gathered across stages. Both train like one rank (2 gloo ranks under torchrun)."""
    from safetensors.torch import load_file

    got = json.loads((parallel_runs / "results.json").read_text())[layout]
    reference = lora_learner(models["tied"])
    ref = train_steps(reference)
    for key in ("losses", "grad_norms"):
        assert max(abs(a - b) for a, b in zip(got[key], ref[key])) <= 1e-5, (key, got, ref)
    ref_weights, weights = reference.hf_state_dict(), load_file(str(parallel_runs / f"{layout}.safetensors"))
    assert set(weights) == set(ref_weights)
    diff = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    moved = max((ref_weights[k] - w0).abs().max().item() for k, w0 in load_file(
        str(Path(models["tied"]) / "model.safetensors")).items() if k in ref_weights)
    print(f"LoRA {layout} vs one rank: merged weights max diff {diff:.2e} (training moved them {moved:.2e})")
    assert diff <= 1e-4 < moved


def test_sglang_serves_the_merged_model(student_server, engine_models):
    """Train adapters, push the merged weights with TensorSync, score on the server: the
    served logprobs are the adapter learner's (and not the base model's)."""
    from safetensors.torch import load_file

    from opd_megatron.objective.batching import pack_rollouts
    from opd_megatron.engines.client import EngineClient
    from opd_megatron.engines.weight_sync import TensorSync
    from opd_megatron.types import Rollout

    learner = lora_learner(str(engine_models["student"]))
    base_lp = None
    sequences = [([2, 11, 14, 4, 15], [8, 15, 3, 16, 9, 1]), ([2, 6, 13, 4, 15, 8], [17, 10, 12]),
                 ([2, 9, 12, 3, 15, 5, 13, 10, 14, 7, 15], [5, 13, 10, 14, 19, 20, 1])]
    rollouts = [Rollout(prompt_ids=p, response_ids=r, sampler_logprobs=[0.0] * len(r), group_id=i)
                for i, (p, r) in enumerate(sequences)]
    base_lp = learner.logprobs(pack_rollouts(rollouts, pad_id=0), temperature=1.0)
    train_steps(learner, 4)
    servers = EngineClient(student_server.server_urls)
    requests = EngineClient(student_server.request_urls, full_vocab_size=21)
    try:
        TensorSync(servers).push(learner.hf_state_dict(), version=7)
        requests.post_each("/flush_cache", {})
        requests.score(rollouts, temperature=1.0)
        batch = pack_rollouts(rollouts, pad_id=0)
        ours = learner.logprobs(batch, temperature=1.0)
        mask = batch.response_mask != 0
        diff = (batch.teacher_logprobs - ours)[mask].abs().max().item()
        moved = (base_lp - ours)[mask].abs().max().item()
        print(f"SGLang (merged) vs learner (adapters): max |dlogprob| {diff:.2e}; "
              f"adapters moved logprobs by up to {moved:.2e}")
        assert diff < FP32_TOL < 1e-2 < moved
    finally:  # other tests of the session expect the original student weights
        original = load_file(str(engine_models["student"] / "model.safetensors"))
        TensorSync(servers).push(original, version=0)
