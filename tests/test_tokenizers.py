"""The Qwen3-like tiny BPE tokenizer and the student/teacher tokenizer comparison (quick, no
servers): digits split, real merges, padded embedding, ChatML + thinking template, a
byte-identical rebuild; ``opd validate`` passes identical tokenizers and refuses each kind of
difference (vocabulary, special token, eos id, chat template, sentencepiece vocabularies) with
exit 2 and one line naming both tokenizer paths."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from opd_megatron.cli import main
from opd_megatron.config.schema import ModelConfig
from opd_megatron.models import tiny, tiny_bpe
from opd_megatron.run.prepare import bpe_training_text
from tests.conftest import PYTHON, REPO

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Simplify 6/8."},
    {"role": "assistant", "content": "<think>\ngcd(6,8)=2;6/2=3;8/2=4\n</think>\n\n\\boxed{\\frac{3}{4}}"},
]
PROMPT_TEXT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\nSimplify 6/8.<|im_end|>\n")


@pytest.fixture(scope="module")
def bpe_models(tmp_path_factory) -> dict:
    """{'teacher': dir, 'student': dir}: random tiny Qwen3s with the BPE tokenizer."""
    root = tmp_path_factory.mktemp("bpe-models")
    text = bpe_training_text()
    return {"teacher": tiny_bpe.save_random_bpe_model(root / "teacher", tiny.TEACHER_SHAPE, 1, text),
            "student": tiny_bpe.save_random_bpe_model(root / "student", tiny.STUDENT_SHAPE, 2, text)}


@pytest.fixture(scope="module")
def tok(bpe_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_models["student"])


# -- the tokenizer -----------------------------------------------------------------------------

def test_digits_are_single_tokens_and_words_merge(tok):
    pieces = tok.tokenize("Evaluate 8-1*5*6 modulo 100.")
    assert pieces == ["Evaluate", "Ġ", "8", "-", "1", "*", "5", "*", "6", "Ġmodulo", "Ġ", "1", "0", "0", "."]
    assert all(len(tok.tokenize(str(d))) == 1 for d in range(10))
    assert tok.tokenize("12345") == list("12345")  # never a multi-digit token
    assert [len(tok.tokenize(w)) for w in ("Simplify", "Evaluate", " modulo", "boxed", "frac")] == [1] * 5
    assert tok.decode(tok.encode("naïve café ½", add_special_tokens=False)) == "naïve café ½"  # byte-level


def test_special_and_think_tokens_like_qwen3(tok):
    bpe_size = tok.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    assert 300 <= bpe_size <= tiny_bpe.BPE_VOCAB_SIZE
    ids = [tok.convert_tokens_to_ids(t) for t in (*tiny_bpe.SPECIAL_TOKENS, *tiny_bpe.THINK_TOKENS)]
    assert ids == list(range(bpe_size, bpe_size + 5))  # after the BPE vocabulary, in Qwen3's order
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    added = {t.content: t.special for t in tok.added_tokens_decoder.values()}
    assert added == {"<|endoftext|>": True, "<|im_start|>": True, "<|im_end|>": True,
                     "<think>": False, "</think>": False}
    text = "<|im_start|>assistant\n<think>\nx\n</think>\n\nok<|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.convert_tokens_to_ids("<think>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nx\n</think>\n\nok"


def test_embedding_is_padded_past_the_tokenizer(bpe_models, tok):
    from safetensors import safe_open

    for role, path in bpe_models.items():
        cfg = json.loads((path / "config.json").read_text())
        gen = json.loads((path / "generation_config.json").read_text())
        assert cfg["vocab_size"] % tiny_bpe.VOCAB_MULTIPLE == 0
        assert cfg["vocab_size"] >= len(tok) + tiny_bpe.MIN_PADDED_ROWS
        assert cfg["eos_token_id"] == gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
        assert cfg["pad_token_id"] == tok.pad_token_id
        assert cfg["max_position_embeddings"] == tiny_bpe.MAX_POSITIONS
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            assert f.get_slice("model.embed_tokens.weight").get_shape()[0] == cfg["vocab_size"]


def test_chat_template_is_chatml_with_thinking(tok):
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == (
        PROMPT_TEXT + "<|im_start|>assistant\n<think>\ngcd(6,8)=2;6/2=3;8/2=4\n</think>\n\n"
        "\\boxed{\\frac{3}{4}}<|im_end|>\n")
    assert tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True) == (
        PROMPT_TEXT + "<|im_start|>assistant\n")
    assert tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False) == (
        PROMPT_TEXT + "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # encode_prompt passes an eval protocol's thinking mode to the template (None: its default)
    from opd_megatron.data.prompts import encode_prompt

    user = CONVERSATION[1]["content"]
    default, on = encode_prompt(tok, user, "tokenizer"), encode_prompt(tok, user, "tokenizer", thinking=True)
    off = encode_prompt(tok, user, "tokenizer", thinking=False)
    assert default == on and tok.decode(off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # an earlier turn's reasoning is dropped, as Qwen3's template does
    two_turns = CONVERSATION + [{"role": "user", "content": "Again?"}]
    assert "gcd" not in tok.apply_chat_template(two_turns, tokenize=False)


def test_templated_task_fits_the_context(tok):
    from opd_megatron.data import mathgen

    texts = [tok.apply_chat_template([{"role": "user", "content": r["question"]},
                                      {"role": "assistant", "content": r["r1_solution_1"]}], tokenize=False)
             for r in mathgen.rows(5, 300)]
    lengths = [len(tok.encode(t, add_special_tokens=False)) for t in texts]
    assert max(lengths) * 4 < tiny_bpe.MAX_POSITIONS  # room for longer responses


def test_rebuild_is_byte_identical(bpe_models):
    """Another process (another hash seed) learns the same tokenizer.json, byte for byte."""
    code = ("import hashlib,sys,tempfile;from opd_megatron.models import tiny_bpe;"
            "from opd_megatron.run.prepare import bpe_training_text;d=tempfile.mkdtemp();"
            "tiny_bpe.build_tokenizer(bpe_training_text()).save_pretrained(d);"
            "print(hashlib.sha256(open(d+'/tokenizer.json','rb').read()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, check=True)
    for path in bpe_models.values():
        assert out.stdout.split()[-1] == hashlib.sha256((path / "tokenizer.json").read_bytes()).hexdigest()


def test_prepare_builds_and_caches_a_bpe_model(tmp_path):
    from opd_megatron.run.prepare import ensure_model, is_prepared

    model = ModelConfig(path=str(tmp_path / "student"), prepare="tiny-random-bpe:student")
    assert ensure_model(model, "student", run_recipe=None)
    assert is_prepared(model) and not ensure_model(model, "student", run_recipe=None)
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert cfg["hidden_size"] == tiny.STUDENT_SHAPE.hidden_size and cfg["vocab_size"] % 64 == 0


# -- the comparison, through `opd validate` ------------------------------------------------------

RECIPE = """\
run: {name: tok-check, num_steps: 2}
rollout: {prompts_per_step: 4, max_new_tokens: 8}
eval: {num_prompts: 4}
data: {chat_template: tokenizer}
"""


@pytest.fixture()
def env(tmp_path, bpe_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for role in ("teacher", "student"):
        shutil.copytree(bpe_models[role], tmp_path / role)
    (tmp_path / "recipe.yaml").write_text(RECIPE + f"student: {{path: {tmp_path / 'student'}}}\n"
                                          f"teacher: {{path: {tmp_path / 'teacher'}}}\n")
    return tmp_path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1))  # other bytes: the files are compared by content


def _refused(capsys, env, overrides=(), needle="teacher.tokenizer", paths=("student", "teacher")) -> str:
    code = main(["validate", "recipe.yaml", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("opd: error: "), err
    assert needle in err, err
    for p in paths:
        assert f"'{p if p.startswith('/') else env / p}'" in err, err
    return err


def _swap_vocab(data) -> None:
    vocab = data["model"]["vocab"]
    vocab["Evaluate"], vocab["Ġmodulo"] = vocab["Ġmodulo"], vocab["Evaluate"]


def test_identical_tokenizers_pass(env, capsys):
    assert main(["validate", "recipe.yaml"]) == 0, capsys.readouterr().err
    _edit_json(env / "teacher/tokenizer_config.json", lambda d: None)  # same content, other bytes
    assert main(["validate", "recipe.yaml"]) == 0, capsys.readouterr().err


def test_vocabulary_difference(env, capsys):
    _edit_json(env / "teacher/tokenizer.json", _swap_vocab)
    err = _refused(capsys, env)
    assert "vocabulary differs" in err and "'Evaluate' is id" in err


def test_special_token_difference(env, capsys):
    def think_special(data):
        next(t for t in data["added_tokens"] if t["content"] == "<think>")["special"] = True

    _edit_json(env / "teacher/tokenizer.json", think_special)
    assert "special/added tokens differ" in _refused(capsys, env)


def test_eos_difference_and_the_eos_token_key(env, capsys):
    """An instruct teacher (eos <|im_end|>) and a base student (eos <|endoftext|>): refused
    until data.eos_token names the token that ends responses for both."""
    _edit_json(env / "student/tokenizer_config.json", lambda d: d.update(eos_token="<|endoftext|>"))
    err = _refused(capsys, env)
    assert "eos token differs" in err and "data.eos_token" in err
    assert main(["validate", "recipe.yaml", "data.eos_token=<|im_end|>"]) == 0, capsys.readouterr().err
    _refused(capsys, env, ["data.eos_token=<|eot|>"], needle="data.eos_token", paths=("student",))


def test_pad_difference(env, capsys):
    _edit_json(env / "teacher/tokenizer_config.json", lambda d: d.update(pad_token="<|im_start|>"))
    assert "pad token differs" in _refused(capsys, env)


def test_chat_template_difference(env, capsys):
    jinja = env / "teacher/chat_template.jinja"
    jinja.write_text(jinja.read_text().replace("<think>\\n\\n</think>\\n\\n", ""))
    err = _refused(capsys, env)
    assert "chat template output differs" in err and "enable_thinking=False" in err
    # raw prompts (data.chat_template=none) never use the template: no refusal
    assert main(["validate", "recipe.yaml", "data.chat_template=none"]) == 0, capsys.readouterr().err


def test_missing_chat_template(env, capsys):
    (env / "teacher/chat_template.jinja").unlink()
    assert "has none" in _refused(capsys, env)


def _sentencepiece_dir(path: Path, vocab_size: int) -> Path:
    """A tokenizer directory with only a sentencepiece model (+ the config naming its class)."""
    spm = pytest.importorskip("sentencepiece")
    from opd_megatron.data import mathgen

    lines = [str(r[k]) for r in mathgen.rows(3, 200) for k in ("question", "r1_solution_1")]
    lines += list(tiny_bpe.FILLER)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", split_digits=True, character_coverage=1.0,
                                   num_threads=1, minloglevel=2, hard_vocab_limit=False)
    path.mkdir(parents=True)
    (path / "tokenizer.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return path


def test_sentencepiece_directories(env, capsys):
    a = _sentencepiece_dir(env / "spm-a", 120)
    shutil.copytree(a, env / "spm-a2")
    _edit_json(env / "spm-a2/tokenizer_config.json", lambda d: None)  # forces loading both
    b = _sentencepiece_dir(env / "spm-b", 140)
    base = ["data.chat_template=none", f"student.tokenizer={a}"]
    assert main(["validate", "recipe.yaml", *base, f"teacher.tokenizer={env / 'spm-a2'}"]) == 0, \
        capsys.readouterr().err
    err = _refused(capsys, env, [*base, f"teacher.tokenizer={b}"], paths=(str(a), str(b)))
    assert "vocabulary differs" in err


def test_bad_bpe_shape_is_refused(env, capsys):
    _refused(capsys, env, ["student.path=/nonexistent/x", "student.prepare=tiny-random-bpe:giant"],
             needle="tiny-random-bpe:student", paths=())


# -- the response end ---------------------------------------------------------------------------

def test_eos_token_ends_references_and_stops_sampling(tok):
    from opd_megatron.config import Config
    from opd_megatron.data import Prompt
    from opd_megatron.engines import requests as req
    from opd_megatron.run.stages import Stages

    base = tok.convert_tokens_to_ids("<|endoftext|>")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [Prompt("Simplify 6/8.", "\\frac{3}{4}", "<think>\nx\n</think>\n\n\\boxed{\\frac{3}{4}}")]
    default = Stages(Config(), tok, servers=None, prompts=None)
    assert default.stop_token_ids is None and default.sample_reference(prompts)[0].response_ids[-1] == end
    cfg = Config()
    cfg.data.eos_token = "<|endoftext|>"
    keyed = Stages(cfg, tok, servers=None, prompts=None)
    assert keyed.sample_reference(prompts)[0].response_ids[-1] == base and keyed.stop_token_ids == [base]
    payload = req.generate_payload([1, 2], samples_per_prompt=1, max_new_tokens=4, temperature=1.0,
                                   top_p=1.0, top_k=-1, seed=None, stop_token_ids=[base])
    assert payload["sampling_params"]["stop_token_ids"] == [base]
    assert "stop_token_ids" not in req.generate_payload([1], samples_per_prompt=1, max_new_tokens=4, temperature=1.0,
                                                        top_p=1.0, top_k=-1, seed=None)["sampling_params"]
