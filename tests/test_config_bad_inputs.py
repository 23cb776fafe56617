"""The bad-input catalogue: each case exits 2 with one line naming the key or file, and
nothing is written (the run directory never appears)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from opd_megatron.cli import main
from tests.conftest import PYTHON, REPO

BASE_RECIPE = """\
run: {name: bad-input-run, num_steps: 2}
rollout: {prompts_per_step: 4, max_new_tokens: 8}
eval: {num_prompts: 4}
"""


@pytest.fixture()
def env(tmp_path, tiny_models, monkeypatch):
    """A working directory with a valid recipe and model dirs the cases can break."""
    monkeypatch.chdir(tmp_path)
    for role in ("teacher", "student"):
        shutil.copytree(tiny_models[role], tmp_path / role)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE_RECIPE + f"student: {{path: {tmp_path / 'student'}}}\n"
                      f"teacher: {{path: {tmp_path / 'teacher'}}}\n")
    return tmp_path


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _retokenize(tok_json: Path) -> None:
    data = json.loads(tok_json.read_text())
    vocab = data["model"]["vocab"]
    a, b = "0", "1"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tok_json.write_text(json.dumps(data))


# (case id, overrides, setup(env) or None, text the one-line message must contain)
CASES = [
    ("unknown-section", ["trainer.lr=1"], None, "'trainer'"),
    ("unknown-key-suggest", ["rollout.temprature=1"], None, "rollout.temperature"),
    ("negative-restarts", ["engines.max_restarts=-1"], None, "engines.max_restarts"),
    ("chat-ratio-range", ["data.chat_ratio=1.5"], None, "data.chat_ratio"),
    ("replay-ratio-range", ["data.replay_ratio=-0.1"], None, "data.replay_ratio"),
    ("replay-without-sets", ["data.source=midtrain", "objective.method=sft", "data.replay_ratio=0.2"],
     None, "data.replay_facts_seeds"),
    ("replay-of-the-current-set", ["data.source=midtrain", "objective.method=sft", "data.facts_seed=2",
                                   "data.replay_ratio=0.2", "data.replay_facts_seeds=[1,2]"], None,
     "data.replay_facts_seeds"),
    ("bad-data-source", ["data.source=documents"], None, "data.source"),
    ("unknown-benchmark", ["eval.benchmarks=[ifevl]"], None, "eval.benchmarks"),
    ("wrong-type-int", ["run.num_steps=abc"], None, "run.num_steps"),
    ("float-for-int", ["rollout.max_new_tokens=1.5"], None, "rollout.max_new_tokens"),
    ("wrong-type-bool", ["run.quiet=maybe"], None, "run.quiet"),
    ("temperature-zero", ["rollout.temperature=0"], None, "rollout.temperature"),
    ("top-p-range", ["rollout.top_p=1.5"], None, "rollout.top_p"),
    ("top-k-zero", ["rollout.top_k=0"], None, "rollout.top_k"),
    ("method-choice", ["objective.method=ppo"], None, "objective.method"),
    ("discount-range", ["objective.discount=2"], None, "objective.discount"),
    ("lr-negative", ["optim.lr=-1"], None, "optim.lr"),
    ("beta2-one", ["optim.beta2=1.0"], None, "optim.beta2"),
    ("min-lr-above-lr", ["optim.lr=0.1", "optim.min_lr=1"], None, "optim.lr"),
    ("tp-heads", ["parallel.tp=3"], None, "parallel.tp"),
    ("pp-layers", ["parallel.pp=3"], None, "parallel.pp"),
    ("tp-zero", ["parallel.tp=0"], None, "parallel.tp"),
    ("engine-tp-heads", ["engines.student.tp=3"], None, "engines.student.tp"),
    ("port-range", ["engines.base_port=80"], None, "engines.base_port"),
    ("world-vs-gpus", ["cluster.gpus_per_node=8", "parallel.tp=2"], None, "parallel"),
    ("engine-tp-vs-gpus", ["cluster.gpus_per_node=8", "parallel.dp=8", "engines.teacher.tp=16"],
     None, "engines.teacher.tp"),
    ("roles-vs-nodes", ["cluster.teacher_nodes=1"], None, "cluster.num_nodes"),
    ("student-missing", ["student.path=/nonexistent/model"], None, "student.path"),
    ("teacher-empty", ["teacher.path="], None, "teacher.path"),
    ("no-config-json", [], lambda d: (d / "student/config.json").unlink(), "config.json"),
    ("corrupt-config-json", [], lambda d: (d / "teacher/config.json").write_text("{oops"), "teacher.path"),
    ("no-weights", [], lambda d: (d / "student/model.safetensors").unlink(), "safetensors"),
    ("no-tokenizer", [], lambda d: [(d / "student" / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
     "student.path"),
    ("tokenizer-dir-missing", ["student.tokenizer=/nonexistent/tok"], None, "student.tokenizer"),
    ("vocab-size-mismatch", [], lambda d: _edit_json(d / "teacher/config.json", vocab_size=99), "vocab_size"),
    ("tokenizer-ids-differ", [], lambda d: _retokenize(d / "teacher/tokenizer.json"), "teacher.tokenizer"),
    ("override-not-kv", ["rollout.temperature"], None, "rollout.temperature"),
    ("section-as-scalar", ["rollout=3"], None, "rollout"),
    ("reward-weight-zero", ["objective.method=opd+reward", "objective.reward_weight=0"], None,
     "objective.reward_weight"),
    ("full-vocab-no-topk", ["objective.kl_estimator=full_vocab", "objective.teacher_top_k=0"], None,
     "objective.teacher_top_k"),
    ("jsonl-missing", ["data.source=jsonl", "data.path=/nonexistent.jsonl"], None, "data.path"),
    ("eval-exceeds-heldout", ["eval.num_prompts=1000"], None, "eval.num_prompts"),
    ("ops-order", ["data.min_ops=3", "data.max_ops=2"], None, "data.max_ops"),
    ("run-name-slash", ["run.name=a/b"], None, "run.name"),
    ("serving-dtype", ["engines.student.dtype=int8"], None, "engines.student.dtype"),
    ("prepare-bad-shape", ["student.path=/nonexistent/x", "student.prepare=tiny-random:giant"], None,
     "student.prepare"),
    ("prepare-missing-recipe", ["student.path=/nonexistent/x", "student.prepare=nope.yaml"], None,
     "student.prepare"),
    ("unreachable-url", ["engines.teacher.urls=[http://127.0.0.1:9]"], None, "engines.teacher.urls"),
    ("url-not-http", ["engines.student.urls=[ftp://x]"], None, "engines.student.urls"),
    ("keep-zero", ["checkpoint.keep=0"], None, "checkpoint.keep"),
    ("lora-rank-negative", ["lora.rank=-1"], None, "lora.rank"),
    ("lora-alpha-zero", ["lora.rank=8", "lora.alpha=0"], None, "lora.alpha"),
    ("lora-target-unknown", ["lora.rank=8", "lora.targets=[q_proj]"], None, "lora.targets"),
    ("lora-target-twice", ["lora.rank=8", "lora.targets=[linear_qkv,linear_qkv]"], None, "lora.targets"),
]


@pytest.mark.parametrize("case_id,overrides,setup,needle", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_exits_2_and_writes_nothing(env, capsys, command, case_id, overrides, setup, needle):
    if setup is not None:
        setup(env)
    before = sorted(p.name for p in env.iterdir())
    code = main([command, "recipe.yaml", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("opd: error: ")
    assert needle in err, err
    assert sorted(p.name for p in env.iterdir()) == before  # nothing written


FILE_CASES = [
    ("recipe-missing", "missing.yaml", None, "missing.yaml"),
    ("recipe-bad-yaml", "bad.yaml", "run: {name: [unclosed\n", "bad.yaml"),
    ("recipe-not-mapping", "list.yaml", "- a\n- b\n", "list.yaml"),
    ("base-missing", "child.yaml", "base: nope.yaml\n", "nope.yaml"),
]


@pytest.mark.parametrize("case_id,name,text,needle", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_recipe_files(env, capsys, case_id, name, text, needle):
    if text is not None:
        (env / name).write_text(text)
    assert main(["validate", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_run_dir_with_other_settings_is_refused(env, capsys):
    run_dir = env / "runs" / "bad-input-run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run: {name: bad-input-run, seed: 99}\n")
    assert main(["run", "recipe.yaml"]) == 2
    err = capsys.readouterr().err
    assert "run.name" in err and "run.overwrite" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_cli_subprocess_no_traceback(env):
    """Through the real console entry: exit 2, one stderr line, no traceback."""
    proc = subprocess.run([PYTHON, "-m", "opd_megatron", "validate", "recipe.yaml", "optim.lr=-1"],
                          capture_output=True, text=True, cwd=env, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert lines == [lines[0]] and "optim.lr" in lines[0] and "Traceback" not in proc.stderr


def test_catalogue_size():
    assert len(CASES) + len(FILE_CASES) + 1 >= 40
