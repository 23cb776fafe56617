"""Every recipe in recipes/ resolves and validates; recipes, overrides and the resolved
config round-trip."""

from __future__ import annotations

import json
import shutil

import pytest

from opd_megatron.cli import main
from opd_megatron.config import load_config, to_yaml
from opd_megatron.run.preflight import load_and_validate
from tests.conftest import REPO

RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "recipes").rglob("*.yaml"))
BIG_MODELS = {"Qwen3-8B-Base-SFT": "qwen3-8b", "Qwen3-8B": "qwen3-8b", "Qwen3-32B": "qwen3-32b"}


@pytest.fixture()
def model_dir(tmp_path, bpe_tokenizer_dir, qwen3_hub_cache, monkeypatch):
    """OPD_MODEL_DIR with config-only stand-ins of the real Qwen3 checkpoints (real config.json
    shapes; one shared Qwen3-like tokenizer, whose eos is <|endoftext|> in the base-derived
    student as in Qwen3-8B-Base, so the recipes' data.eos_token is what lets them pass; a
    weights file holding only a safetensors header with the embedding's shape): enough for
    validation, which reads only configs, headers and file layout. The recipes' hub dataset and
    benchmarks come from a hub cache filled by `opd fetch` from the local hub stand-in."""
    from opd_megatron.plan.flops import NAMED_SHAPES

    for dirname, shape_name in BIG_MODELS.items():
        s, d = NAMED_SHAPES[shape_name], tmp_path / dirname
        d.mkdir()
        (d / "config.json").write_text(json.dumps({
            "model_type": "qwen3", "hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.num_layers, "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads, "head_dim": s.head_dim, "vocab_size": s.vocab_size,
            "tie_word_embeddings": s.tie_word_embeddings}))
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(bpe_tokenizer_dir / f, d / f)
        if "Base" in dirname:
            tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
            (d / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "eos_token": "<|endoftext|>"}))
        header = json.dumps({"model.embed_tokens.weight": {
            "dtype": "BF16", "shape": [s.vocab_size, s.hidden_size],
            "data_offsets": [0, 2 * s.vocab_size * s.hidden_size]}}).encode()
        (d / "model-00001-of-00001.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    monkeypatch.setenv("OPD_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("OPD_HUB_CACHE", str(qwen3_hub_cache))
    monkeypatch.chdir(REPO)
    return tmp_path


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"opd-tiny-cpu.yaml", "opd-qwen3-8b-to-8b-base-3n8g.yaml", "opd-qwen3-32b-to-8b-base-4n8g.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p) for p in RECIPES])
def test_every_recipe_validates(model_dir, recipe, capsys):
    cfg, _ = load_and_validate(str(recipe))
    assert cfg.run.name
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "# plan" in out and "learner: tp=" in out


def test_tml_recipe_matches_the_blog(model_dir):
    cfg, _ = load_and_validate("recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml")
    assert (cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt) == (512, 4)
    assert (cfg.rollout.max_new_tokens, cfg.run.num_steps) == (4096, 150)
    assert (cfg.objective.kl_coef, cfg.objective.discount, cfg.rollout.temperature) == (1.0, 0.0, 1.0)


def test_base_and_overrides_layer_in_order(model_dir):
    cfg = load_config("recipes/sft-tiny-cpu.yaml", ["optim.lr=0.05", "rollout.prompts_per_step=3"])
    assert cfg.objective.method == "sft"          # from the recipe
    assert cfg.rollout.max_new_tokens == 40       # from its base
    assert cfg.optim.lr == 0.05 and cfg.rollout.prompts_per_step == 3  # command line wins
    assert cfg.optim.beta1 == 0.9                 # schema default


def test_resolved_config_reruns_identically(model_dir, tmp_path):
    cfg = load_config("recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml", ["run.seed=5"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(str(path))
    assert again == cfg
    assert str(model_dir) in again.teacher.path  # interpolations are resolved in the written file


def test_every_schema_field_is_documented():
    import ast

    tree = ast.parse((REPO / "opd_megatron/config/schema.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and node.name != "Config":
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), \
                        f"{node.name}.{stmt.target.id} has no docstring"


def test_a_prepare_hash_is_the_same_in_any_checkout(tmp_path, monkeypatch):
    """The content hash that stamps a shipped model names a recipe's base by its path from the
    recipe, so a clone elsewhere (CI's) finds the shipped model current: the same hash from a
    copy of recipes/ in another directory."""
    from opd_megatron.run.prepare import prepare_hash

    spec = "recipes/tiny/sft-ladder-1layer.yaml"  # a prepare recipe with a base
    monkeypatch.chdir(REPO)
    here = prepare_hash(spec)
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    assert prepare_hash(spec) == here
    (tmp_path / "recipes/tiny/sft-ladder.yaml").write_text(
        (REPO / "recipes/tiny/sft-ladder.yaml").read_text().replace("num_steps: 1024", "num_steps: 512"))
    assert prepare_hash(spec) != here  # the base's content is hashed
