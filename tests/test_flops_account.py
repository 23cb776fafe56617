"""FLOPs account: shapes vs published sizes, the formula vs torch's FLOP counter, the TML anchors."""

from __future__ import annotations

import json

import pytest

from opd_megatron.plan import flops
from opd_megatron.errors import ConfigError
from opd_megatron.plan.flops import (NAMED_SHAPES, FlopsCounter, causal_context_tokens,
                                forward_flops_per_token, resolve_shape, shape_from_hf_config)

# Model-card sizes (huggingface.co/Qwen/Qwen3-*): total and non-embedding parameters.
MODEL_CARD = {"qwen3-0.6b": (0.6e9, 0.44e9), "qwen3-1.7b": (1.7e9, 1.4e9),
              "qwen3-4b": (4.0e9, 3.6e9), "qwen3-8b": (8.2e9, 6.95e9),
              "qwen3-14b": (14.8e9, 13.2e9), "qwen3-32b": (32.8e9, 31.2e9)}


@pytest.mark.parametrize("name", sorted(MODEL_CARD))
def test_named_shapes_match_model_cards(name):
    shape = NAMED_SHAPES[name]
    total, non_embedding = MODEL_CARD[name]
    assert shape.total_params == pytest.approx(total, rel=0.03)
    assert shape.flops_params - shape.embedding_params == pytest.approx(non_embedding, rel=0.03)


def test_base_alias_and_case():
    assert resolve_shape("Qwen3-8B-Base") == NAMED_SHAPES["qwen3-8b"]


def test_hf_config_counts_match_a_real_model(tmp_path):
    from transformers import Qwen3ForCausalLM

    from opd_megatron.models.tiny import STUDENT_SHAPE, TinyShape, qwen3_config

    for tiny in (STUDENT_SHAPE, TinyShape(hidden_size=64, num_layers=3, intermediate_size=96,
                                          tie_word_embeddings=False)):
        cfg = qwen3_config(tiny, vocab_size=21)
        (tmp_path / "config.json").write_text(cfg.to_json_string())
        shape = resolve_shape(str(tmp_path))
        model = Qwen3ForCausalLM(cfg)
        stored = sum(p.numel() for p in model.parameters())
        assert shape.total_params == stored
        # FLOPs-N: the 2-D weights but the input lookup; a tied matrix counts once.
        matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
        expected_n = matrices - (0 if tiny.tie_word_embeddings else 21 * tiny.hidden_size)
        assert shape.flops_params == expected_n


def test_forward_formula_matches_torch_flop_counter(tmp_path):
    """2N + 4 * layers * d_attn * keys per token equals torch's count of a real forward
    (the eager attention computes the full L x L scores, so keys = L for every token)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3ForCausalLM

    from opd_megatron.models.tiny import TEACHER_SHAPE, qwen3_config

    cfg = qwen3_config(TEACHER_SHAPE, vocab_size=21)
    cfg._attn_implementation = "eager"
    model = Qwen3ForCausalLM(cfg).eval()
    shape = shape_from_hf_config(json.loads(cfg.to_json_string()))
    batch, length = 2, 40
    ids = torch.randint(0, 21, (batch, length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    measured = counter.get_total_flops()
    predicted = batch * length * forward_flops_per_token(shape, context_tokens=length)
    assert predicted == pytest.approx(measured, rel=1e-6)


def test_causal_context_and_add_sequences_brute_force():
    for prefix, new in [(0, 1), (0, 7), (5, 3), (12, 0)]:
        n, summed = causal_context_tokens(prefix, new)
        assert (n, summed) == (new, sum(prefix + i + 1 for i in range(new)))
    s = NAMED_SHAPES["qwen3-0.6b"]
    c = FlopsCounter(s)
    c.add_sequences("student_sampling", [(4, 3), (2, 5)])
    brute = sum(forward_flops_per_token(s, p + i + 1) for p, n in [(4, 3), (2, 5)] for i in range(n))
    assert c.flops["student_sampling"] == pytest.approx(brute, rel=1e-12)
    assert c.tokens["student_sampling"] == 8


def test_counter_roles_sums_and_resume():
    c = FlopsCounter(NAMED_SHAPES["qwen3-8b"], NAMED_SHAPES["qwen3-32b"])
    c.add("learner_train", 10, context_tokens=0)
    c.add("teacher_scoring", 10, context_tokens=0)
    assert c.flops["learner_train"] == 3 * 2 * NAMED_SHAPES["qwen3-8b"].flops_params * 10
    d = c.as_dict()
    assert d["total"] == d["teacher"] + d["student"] and d["teacher"] == c.flops["teacher_scoring"]
    c2 = FlopsCounter(NAMED_SHAPES["qwen3-8b"], NAMED_SHAPES["qwen3-32b"])
    c2.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert c2.as_dict() == d
    with pytest.raises(ValueError, match="unknown FLOPs role"):
        c.add("sampling", 1)
    with pytest.raises(ValueError, match="teacher shape"):
        FlopsCounter(NAMED_SHAPES["qwen3-8b"]).add("teacher_scoring", 1)


def test_cli_tml_opd_row_within_10_percent(capsys):
    assert flops.cli_main(["--student", "qwen3-8b", "--teacher", "qwen3-32b",
                           "--tokens", "1.25e9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student_flops"] == pytest.approx(8.2e19, rel=0.10)
    assert out["teacher_flops"] == pytest.approx(8.4e19, rel=0.10)
    assert flops.cli_main(["--student", "qwen3-8b", "--teacher", "qwen3-32b", "--tokens", "1.25e9"]) == 0
    text = capsys.readouterr().out
    assert "student FLOPs: 8.1" in text and "teacher FLOPs: 8.5" in text


def test_cli_tml_table_ratios(capsys):
    assert flops.cli_main(["--table", "tml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ce_student_only"] == pytest.approx(9.0, rel=0.10)
    assert data["ce_with_teacher_sampling"] == pytest.approx(30.0, rel=0.10)
    opd = data["rows"]["OPD"]
    # Token counts derived from the blog's FLOPs agree with the recipe's 150x512x4x~4K.
    assert opd["student_tokens"] == pytest.approx(1.25e9, rel=0.10)
    assert opd["teacher_tokens"] == pytest.approx(1.25e9, rel=0.10)
    assert flops.cli_main(["--table", "tml"]) == 0
    assert "blog 9x" in capsys.readouterr().out


def test_bad_model_names_suggest_close_match(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'qwen3-32b'"):
        resolve_shape("qwen3-32")
    with pytest.raises(ConfigError, match="unknown model 'llama-70b'"):
        flops.cli_main(["--student", "llama-70b", "--tokens", "1"])
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ConfigError, match="missing key"):
        resolve_shape(str(tmp_path))
    with pytest.raises(ConfigError, match="--student"):
        flops.cli_main(["--teacher", "qwen3-32b"])


def test_lora_changes_only_the_learner_roles():
    """LoRA's frozen base drops the weight gradients from training (0.69x at Qwen3-8B, r=16);
    the servers run the merged weights, so sampling and teacher FLOPs stay the same."""
    from opd_megatron.config.schema import LORA_TARGETS

    student, teacher = resolve_shape("qwen3-8b"), resolve_shape("qwen3-32b")
    full, lora = FlopsCounter(student, teacher), FlopsCounter(student, teacher, 16, LORA_TARGETS)
    for counter in (full, lora):
        for role in ("student_sampling", "teacher_scoring", "learner_train", "learner_recompute"):
            counter.add_sequences(role, [(512, 3584)])
    assert lora.flops["student_sampling"] == full.flops["student_sampling"]
    assert lora.teacher_flops == full.teacher_flops
    ratio = lora.flops["learner_train"] / full.flops["learner_train"]
    assert 0.68 < ratio < 0.71
    assert lora.flops["learner_recompute"] > full.flops["learner_recompute"]  # the adapters run too
