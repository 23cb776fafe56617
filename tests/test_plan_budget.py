"""The plan on paper (opd_megatron.plan.budget): `opd validate` on the Qwen3 recipes with no
weights present, its memory and time figures against a hand computation for Qwen3-8B, and a
layout that does not fit refused with the numbers."""

from __future__ import annotations

import re

import pytest

from opd_megatron.cli import main
from opd_megatron.plan.budget import GIB, learner_memory, server_memory, step_seconds
from opd_megatron.plan.flops import resolve_shape
from tests.conftest import REPO

TML = "recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml"
QWEN3 = "recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml"


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    """A login node: OPD_MODEL_DIR exists and holds none of the recipes' models."""
    monkeypatch.setenv("OPD_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(REPO)
    return tmp_path


# Qwen3-8B by hand: h 4096, ffn 12288, 36 layers, 32 heads x 128, 8 KV heads, vocab 151,936,
# untied: P = 8,190,735,360 parameters.
P = 8_190_735_360


def test_learner_memory_matches_a_hand_computation_for_qwen3_8b():
    m = learner_memory(resolve_shape("qwen3-8b"), tp=2, pp=1, dp=4, microbatch_tokens=8192,
                       dtype="bfloat16", distributed_optimizer=True)
    assert m.weights == pytest.approx(P * 2 / 2 / GIB)          # bf16, split over tp 2: 7.63 GiB
    assert m.gradients == pytest.approx(P * 4 / 2 / GIB)        # fp32 main grads: 15.26 GiB
    assert m.optimizer == pytest.approx(P * 12 / 2 / 4 / GIB)   # master + Adam, / dp 4: 11.44 GiB
    # per token and layer: 2 B x (4 x 4096 + (2 x 4096 + 2 x 1024 + 3 x 12288) / 2) = 79,872 B
    assert m.activations == pytest.approx(8192 * 36 * 79_872 / GIB)  # 21.94 GiB
    assert m.logits == pytest.approx(8192 * 151_936 / 2 * (2 + 8) / GIB)  # 5.80 GiB
    assert m.total == pytest.approx(62.06, abs=0.01)
    # LoRA trains only its adapters: grads and optimizer shrink, weights and activations do not
    lora = learner_memory(resolve_shape("qwen3-8b"), tp=2, pp=1, dp=4, microbatch_tokens=8192,
                          dtype="bfloat16", distributed_optimizer=True, trained_params=10**7)
    assert lora.weights == m.weights and lora.activations == m.activations
    assert lora.gradients == pytest.approx(10**7 * 4 / 2 / GIB)


def test_server_memory_and_step_time_match_a_hand_computation():
    s = server_memory(resolve_shape("qwen3-8b"), tp=1, dtype="bfloat16", gpu_memory_gib=141, mem_fraction=0.8)
    assert s.weights == pytest.approx(P * 2 / GIB)              # 15.26 GiB
    assert s.kv_cache == pytest.approx(0.8 * 141 - P * 2 / GIB)  # 97.54 GiB
    assert s.kv_tokens == int(s.kv_cache * GIB / (2 * 36 * 8 * 128 * 2))  # 147,456 B a token: ~710,290
    # 8 sampling GPUs at 10% of 989 TFLOP/s, 16 training GPUs at 40%
    t = step_seconds({"student_sampling": 1e17, "learner_train": 4e17}, {"student": 8, "teacher": 8, "learner": 16},
                     989, mfu=0.4, sampling_mfu=0.1)
    assert t["student_sampling"] == pytest.approx(1e17 / (8 * 989e12 * 0.1))
    assert t["learner_train"] == pytest.approx(4e17 / (16 * 989e12 * 0.4))
    assert t["total"] == pytest.approx(t["student_sampling"] + t["learner_train"])


def _plan(capsys, *args: str) -> str:
    assert main(["validate", *args]) == 0
    return capsys.readouterr().out.split("# plan", 1)[1]


def test_validate_plans_the_qwen3_recipes_with_no_weights_present(no_weights, capsys):
    out = _plan(capsys, TML)
    assert "student.path: " in out and "is not here; shapes from student.flops_name qwen3-8b" in out
    assert "memory: learner tp2 pp1 dp4: 62.1 GiB = weights 7.6 + grads 15.3 + optimizer 11.4 + " \
           "activations 21.9 + logits 5.8" in out
    assert "student server tp1: weights 15.3 GiB + KV cache 97.5 GiB (~710290 tokens" in out
    # the step time by hand: every one of 2048 responses at 4096 tokens, FLOPs per token
    # 2N + 4 L d_attn x 2048 keys (N = 7,568,097,280 matmul weights) = 16,344,154,112
    sampling = 2048 * 4096 * 16_344_154_112
    assert f"student_sampling {sampling:.3g}" in out
    step = re.search(r"estimated step time at MFU 0.4 \(sampling 0.1.*?: (\d+) s \(student_sampling (\d+) s", out)
    assert step and int(step.group(2)) == round(sampling / (8 * 989e12 * 0.1))
    hours = re.search(r"for 150 steps on 24 GPUs: [\d.]+ h, ([\d,]+) GPU-hours", out)
    assert hours and abs(int(hours.group(1).replace(",", "")) - int(step.group(1)) * 150 * 24 / 3600) <= 1.5
    assert "1,800 GPU-hours" in out and "8.4e19" in out
    # the 32B-teacher recipe, and a stated MFU changes the estimate
    out32 = _plan(capsys, QWEN3, "--mfu", "0.2")
    assert "shapes from teacher.flops_name qwen3-32b" in out32 and "estimated step time at MFU 0.2" in out32


def test_a_plan_that_does_not_fit_is_refused_with_the_numbers(no_weights, capsys):
    assert main(["validate", TML, "parallel.microbatch_tokens=32768"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opd: error: parallel.microbatch_tokens: the learner needs ~145.3 GiB")
    assert "activations 87.8" in err[0] and "0.9 x 141 GiB" in err[0]
    assert main(["validate", TML, "student.flops_name=null"]) == 2
    assert "student.flops_name" in capsys.readouterr().err
    # a run needs the weights: the same recipe refuses to start without them
    assert main(["run", TML]) == 2
    assert "student.path: model directory not found" in capsys.readouterr().err
    assert not (no_weights / "models").exists() and not (REPO / "runs" / "opd-qwen3-8b-to-8b-base").exists()
