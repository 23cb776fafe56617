"""HF <-> Megatron conversion of Qwen3: logits parity with transformers, exact round trips
through TP/PP shards, the ``opd convert`` CLI, named shapes and bad input. Real Megatron-Core
(gloo, one process) and real transformers; nothing is mocked.

Run: .venv/bin/pytest -x -q tests/test_learner_convert.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opd_megatron.errors import ConfigError
from tests.conftest import REPO
from tests.learner_fixtures import make_models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return make_models(tmp_path_factory.mktemp("learner-convert"))


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_megatron_logits_match_hf_eager(models, kind):
    from opd_megatron.learner.convert import verify

    result = verify(models[kind], seq_len=24)
    assert result["max_abs_logit_diff"] <= 1e-5, result
    assert result["round_trip_exact"] == 1.0


def test_verify_cli_fails_on_a_mapping_bug(models, monkeypatch, capsys):
    """A k/v swap inside linear_qkv must show up as a large logit diff and exit 1."""
    from opd_megatron.learner import convert, mapping

    assert convert.cli_main(["--verify", models["untied"]]) == 0
    assert "max_abs_logit_diff=" in capsys.readouterr().out
    real = mapping._qkv_shard
    monkeypatch.setattr(mapping, "_qkv_shard", lambda q, k, v, *a: real(q, v, k, *a))
    assert convert.cli_main(["--verify", models["untied"]]) == 1
    line = capsys.readouterr().out
    diff = float(line.split("max_abs_logit_diff=")[1].split()[0])
    assert diff > 1e-3, line


def _safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("kind,tp,pp,spec", [("tied", 2, 2, "local"), ("untied", 2, 2, "local"),
                                             ("untied", 2, 1, "te")])
def test_round_trip_through_shards_is_exact(models, tmp_path, kind, tp, pp, spec):
    from opd_megatron.learner.convert import cli_main

    src = Path(models[kind])
    mcore, back = tmp_path / "mcore", tmp_path / "hf"
    assert cli_main(["hf-to-mcore", str(src), str(mcore), "--tp", str(tp), "--pp", str(pp),
                     "--spec", spec]) == 0
    shards = sorted(p.parent.name for p in mcore.glob("mp_rank_*/model.pt"))
    assert len(shards) == tp * pp
    shard = torch.load(mcore / shards[0] / "model.pt", weights_only=True)["model"]
    te_name = "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"
    assert (te_name in shard) == (spec == "te")
    assert cli_main(["mcore-to-hf", str(mcore), str(back)]) == 0
    original, restored = _safetensors(src), _safetensors(back)
    assert set(original) == set(restored)
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    for side in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (back / side).is_file()
    assert not list(tmp_path.glob(".*tmp-*")), "temp directories left behind"


def test_round_trip_output_loads_in_transformers(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_megatron.learner.convert import hf_to_mcore, mcore_to_hf

    mcore_to_hf(hf_to_mcore(models["tied"], tmp_path / "m", tp=2), tmp_path / "hf")
    tokens = torch.randint(3, 21, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()(tokens).logits
              for d in (models["tied"], tmp_path / "hf")]
    assert torch.equal(logits[0], logits[1])
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("1+2=")["input_ids"]


def test_bad_paths_raise_config_error_naming_the_file(models, tmp_path):
    from opd_megatron.learner.convert import cli_main

    with pytest.raises(ConfigError, match="nope/config.json"):
        cli_main(["hf-to-mcore", str(tmp_path / "nope"), str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="mcore_meta.json"):
        cli_main(["mcore-to-hf", str(tmp_path), str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="tp=3"):
        cli_main(["hf-to-mcore", models["tied"], str(tmp_path / "out"), "--tp", "3"])
    with pytest.raises(ConfigError, match="hf-to-mcore SRC DST"):
        cli_main(["hf-to-mcore", models["tied"]])
    assert not (tmp_path / "out").exists()


# Published totals (HF model cards, billions of parameters incl. embeddings).
PUBLISHED_PARAMS_B = {"qwen3-0.6b": 0.6, "qwen3-1.7b": 1.7, "qwen3-4b": 4.0, "qwen3-8b": 8.2,
                      "qwen3-14b": 14.8, "qwen3-32b": 32.8}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_B))
def test_named_shapes_match_published_sizes_and_build_configs(name):
    from opd_megatron.learner.qwen3 import Qwen3Arch, shape_config, transformer_config

    arch = Qwen3Arch.from_hf(shape_config(name))
    h, f, layers = arch.hidden_size, arch.intermediate_size, arch.num_layers
    attn = h * arch.head_dim * (2 * arch.num_heads + 2 * arch.num_kv_heads) + 2 * arch.head_dim
    per_layer = attn + 3 * h * f + 2 * h
    embed = arch.vocab_size * h * (1 if arch.tie_word_embeddings else 2)
    total_b = (layers * per_layer + embed + h) / 1e9
    assert total_b == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.08), total_b
    cfg = transformer_config(arch, tp=8 if arch.num_kv_heads % 8 == 0 else 1, pp=1,
                             dtype=torch.bfloat16)
    assert cfg.num_query_groups == 8 and cfg.qk_layernorm and cfg.kv_channels == 128


def test_unknown_shape_and_bad_config(tmp_path):
    from opd_megatron.learner.qwen3 import Qwen3Arch, read_hf_config, shape_config

    with pytest.raises(ConfigError, match="qwen3-7b"):
        shape_config("qwen3-7b")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        read_hf_config(tmp_path)
    with pytest.raises(ConfigError, match="hidden_size"):
        Qwen3Arch.from_hf({"model_type": "qwen3"}, "x/config.json")


def test_commits_replace_whole_and_leave_no_stale_copies(tmp_path):
    """commit_dir: the new directory replaces the old one whole, and the `.old-*` copies a kill
    between its two renames would leave are pruned by the next commit. open_run_dir writes
    config.yaml through a temporary it renames into place."""
    from opd_megatron.config import load_config
    from opd_megatron.learner.hf_io import commit_dir, temp_sibling
    from opd_megatron.run.rundir import open_run_dir

    final = tmp_path / "hf"
    for version in ("1", "2"):
        tmp = temp_sibling(final)
        (tmp / "v").write_text(version)
        commit_dir(tmp, final)
        (tmp_path / f".hf.old-left{version}").mkdir()  # what a kill between the renames leaves
    tmp = temp_sibling(final)
    (tmp / "v").write_text("3")
    commit_dir(tmp, final)
    assert (final / "v").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    cfg = load_config(str(REPO / "recipes/opd-tiny-cpu.yaml"), [f"run.output_dir={tmp_path / 'runs'}"])
    run_dir = open_run_dir(cfg, None)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert load_config(str(run_dir / "config.yaml")).run.name == cfg.run.name
