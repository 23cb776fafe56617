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
    ("lr-inf", ["optim.lr=.inf"], None, "optim.lr"),
    ("extra-args-host", ["engines.student.extra_args=[--host,0.0.0.0]"], None, "engines.student.extra_args"),
    ("extra-args-key", ["engines.teacher.extra_args=[--api-key=x]"], None, "engines.teacher.extra_args"),
    ("extra-args-config", ["engines.teacher.extra_args=[--config,a.yaml]"], None, "engines.teacher.extra_args"),
    ("api-key-env-unset", ["engines.api_key_env=OPD_TEST_UNSET_KEY"], None, "engines.api_key_env"),
    ("startup-timeout-inf", ["engines.startup_timeout_s=.inf"], None, "engines.startup_timeout_s"),
    ("temperature-nan", ["rollout.temperature=.nan"], None, "rollout.temperature"),
    ("prepare-over-a-user-model", ["student.prepare=tiny-random:student"],
     lambda d: (d / "student" / ".opd-prepare.json").unlink(missing_ok=True), "student.prepare=null"),
    ("lora-target-twice", ["lora.rank=8", "lora.targets=[linear_qkv,linear_qkv]"], None, "lora.targets"),
    ("kl-at-learner-without-sampled-kl", ["objective.kl_estimator=full_vocab", "objective.teacher_top_k=4",
                                          "objective.kl_at=learner"], None, "objective.kl_at"),
    ("staleness-with-megatron-teacher", ["rollout.max_staleness=1", "objective.teacher_backend=megatron"], None,
     "rollout.max_staleness"),
    ("stream-without-teacher-scoring", ["objective.method=sft", "rollout.stream_chunks=2"], None,
     "rollout.stream_chunks"),
    ("stream-more-chunks-than-prompts", ["rollout.stream_chunks=5"], None, "rollout.stream_chunks"),
]


# Each ranged field just past its bound (or at it, where the bound is open), written out here, not
# derived from the schema's predicates: (dotted key, bad value).
EDGES = [
    ("run.seed", "-1"), ("run.num_steps", "0"), ("run.log_interval", "0"), ("data.num_heldout", "-1"),
    ("data.min_ops", "0"), ("data.num_sft_samples", "0"), ("data.num_facts", "901"),
    ("data.facts_per_document", "0"), ("rollout.prompts_per_step", "0"), ("rollout.samples_per_prompt", "0"),
    ("rollout.max_new_tokens", "0"), ("rollout.top_p", "0"), ("rollout.top_k", "-2"),
    ("objective.kl_coef", "-0.1"), ("objective.reward_weight", "-1"), ("objective.jsd_beta", "1.1"),
    ("objective.teacher_top_k", "-1"), ("objective.is_cap", "0.5"), ("objective.clip_eps", "1"),
    ("objective.teacher_temperature", "0"), ("optim.min_lr", "-1e-5"), ("optim.warmup_steps", "-1"),
    ("optim.weight_decay", "-0.1"), ("optim.beta1", "1"), ("optim.eps", "0"), ("optim.grad_clip", "-1"),
    ("parallel.dp", "0"), ("parallel.microbatch_tokens", "0"), ("engines.student.num_servers", "0"),
    ("engines.student.mem_fraction", "0"), ("engines.teacher.mem_fraction", "1.5"),
    ("engines.student.max_total_tokens", "255"), ("engines.teacher.num_servers", "0"),
    ("engines.base_port", "65001"), ("engines.startup_timeout_s", "0"), ("engines.request_timeout_s", "-1"),
    ("engines.max_retries", "-1"), ("engines.max_concurrency", "0"), ("eval.interval", "-1"),
    ("eval.num_prompts", "0"), ("eval.samples_per_prompt", "0"), ("eval.temperature", "-0.5"),
    ("eval.top_p", "1.01"), ("eval.max_new_tokens", "0"), ("checkpoint.interval", "-2"),
    ("cluster.num_nodes", "0"), ("cluster.gpus_per_node", "-1"), ("cluster.signal_s", "-1"),
    ("continual.rounds", "0"), ("continual.midtrain_lr", "0"), ("objective.discount", "-0.01"),
    ("optim.lr", "nan"), ("rollout.top_p", ".inf"), ("objective.kl_coef", "-.inf"),
    ("rollout.max_staleness", "-1"), ("rollout.stream_chunks", "-1"),
    ("rollout.offpolicy_prefetch_steps", "0"), ("eval.stop_at_accuracy", "1.5"),
    ("compare.target_accuracy", "0"), ("compare.fit_from_step", "0"),
]
CASES += [(f"edge-{key}={bad}", [f"{key}={bad}"], None, key) for key, bad in EDGES]


def _prepare_cycle(d: Path) -> None:
    (d / "a.yaml").write_text(f"base: recipe.yaml\nstudent: {{path: {d / 'built-by-a'}, prepare: b.yaml}}\n")
    (d / "b.yaml").write_text(f"base: recipe.yaml\nstudent: {{path: {d / 'built-by-b'}, prepare: a.yaml}}\n")


CASES += [
    ("config-json-not-object", [], lambda d: (d / "student/config.json").write_text("[1, 2]"), "not an object"),
    ("prepare-cycle", ["student.path=/nonexistent/s", "student.prepare=a.yaml"], _prepare_cycle, "prepare cycle"),
    ("stop-at-target-without-evals", ["eval.stop_at_accuracy=0.5", "eval.interval=0"], None,
     "eval.stop_at_accuracy"),
    ("unkeyed-router-beyond-loopback", ["engines.router=true", "engines.student.num_servers=2",
                                        "engines.host=10.211.0.9"], None, "engines.router"),
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


_HELD: list = []


def _hold_port(port: int) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    _HELD.append(sock)


# What only `opd run` on this machine can find (`opd validate` plans for another): (id, overrides,
# setup, needle); still before the run directory is written.
RUN_CASES = [
    ("port-in-use", ["engines.base_port=28991"], lambda d: _hold_port(28991), "engines.base_port"),
    ("world-size-vs-parallel", ["parallel.dp=2"], None, "torchrun --nproc_per_node=2"),
    ("output-dir-is-a-file", ["run.output_dir=recipe.yaml/runs"], None, "run.output_dir"),
]


@pytest.mark.parametrize("case_id,overrides,setup,needle", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_input_only_a_run_finds_exits_2_and_writes_nothing(env, capsys, case_id, overrides, setup, needle):
    test_bad_input_exits_2_and_writes_nothing(env, capsys, "run", case_id, overrides, setup, needle)
    assert main(["validate", "recipe.yaml", *overrides]) == 0  # the plan on paper is not this machine's


# What `opd compare` refuses before it builds, starts or writes anything: (id, overrides, needle).
ARMS = "compare.arms={sft: [objective.method=sft], opd: [objective.method=opd]}"
COMPARE_CASES = [
    ("compare-without-arms", [], "compare.arms"),
    ("compare-sft-arm-missing", ["compare.arms={opd: [objective.method=opd]}"], "compare.sft_arm"),
    ("compare-arm-bad-override", ["compare.arms={sft: [objective.method=sfx]}"], "compare.arms.sft"),
    ("compare-sweep-without-lrs", [ARMS, "compare.sweep=true"], "compare.sweep_lrs"),
    ("compare-sweep-unknown-arm", [ARMS, "compare.sweep=true", "compare.sweep_lrs={rl: [1.0e-4]}"],
     "compare.sweep_lrs"),
    ("compare-sweep-bad-lr", [ARMS, "compare.sweep=true", "compare.sweep_lrs={opd: [0.0]}"], "compare.sweep_lrs.opd"),
    ("compare-seeds-repeated", [ARMS, "compare.seeds=[1,1]"], "compare.seeds"),
    ("compare-level-above-target", [ARMS, "compare.target_accuracy=0.8", "compare.also_at=[0.9]"], "compare.also_at"),
    ("compare-no-ladder", [ARMS], "compare.ladder"),
]


@pytest.mark.parametrize("case_id,overrides,needle", COMPARE_CASES, ids=[c[0] for c in COMPARE_CASES])
def test_bad_compare_exits_2_and_writes_nothing(env, capsys, case_id, overrides, needle):
    test_bad_input_exits_2_and_writes_nothing(env, capsys, "compare", case_id, overrides, None, needle)


def _finished_arm_run_of_another_lr(d: Path) -> None:
    """runs/<name>/sft-lr<lr>-s<seed>: finished, but trained at another lr than the arm asks for."""
    from opd_megatron.config import to_yaml
    from opd_megatron.config.load import load_config
    from opd_megatron.run.comparison import run_name

    cfg = load_config(d / "recipe.yaml", [ARMS])
    run = Path(cfg.run.output_dir) / cfg.run.name / run_name("sft", cfg.optim.lr, cfg.compare.seeds[0])
    cfg.optim.lr *= 3
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "summary.json").write_text(json.dumps({"completed": True}))


def test_compare_refuses_a_finished_run_of_other_settings(env, capsys):
    """An edited recipe over an earlier comparison: the finished run under the arm's name is not
    the run asked for; refused by name instead of being reported as it."""
    test_bad_input_exits_2_and_writes_nothing(env, capsys, "compare", "compare-stale-run", [ARMS],
                                              _finished_arm_run_of_another_lr, "holds a finished run with other settings")


FILE_CASES = [
    ("recipe-missing", "missing.yaml", None, "missing.yaml"),
    ("recipe-bad-yaml", "bad.yaml", "run: {name: [unclosed\n", "bad.yaml"),
    ("recipe-not-mapping", "list.yaml", "- a\n- b\n", "list.yaml"),
    ("base-missing", "child.yaml", "base: nope.yaml\n", "nope.yaml"),
    ("recipe-binary", "model.yaml", b"\x80\x04\x95binary", "not a text file"),
]


@pytest.mark.parametrize("case_id,name,text,needle", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_recipe_files(env, capsys, case_id, name, text, needle):
    if isinstance(text, bytes):
        (env / name).write_bytes(text)
    elif text is not None:
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


def test_prepare_never_replaces_what_it_did_not_build(env, capsys):
    """A model directory without prepare's stamp is refused, not rebuilt, and stays as it was;
    one prepare built (stamped, an older recipe) is rebuilt in place; an empty one is built into."""
    from opd_megatron.config.schema import ModelConfig
    from opd_megatron.errors import ConfigError
    from opd_megatron.run.prepare import STAMP, ensure_model

    (env / "student" / STAMP).unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in (env / "student").iterdir()}
    assert main(["run", "recipe.yaml", "student.prepare=tiny-random:student"]) == 2
    assert "student.prepare=null" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^student\.path: .* holds files student\.prepare did not build"):
        ensure_model(ModelConfig(path=str(env / "student"), prepare="tiny-random:student"), "student", None)
    assert {p.name: p.read_bytes() for p in (env / "student").iterdir()} == before
    ours = ModelConfig(path=str(env / "built"), prepare="tiny-random:student")
    (env / "built").mkdir()
    assert ensure_model(ours, "student", None) and not ensure_model(ours, "student", None)
    (env / "built" / STAMP).write_text(json.dumps({"hash": "older", "prepare": "tiny-random:student"}))
    assert ensure_model(ours, "student", None)  # its own, stale: rebuilt
    assert json.loads((env / "built" / STAMP).read_text())["hash"] != "older"
    assert sorted(p.name for p in env.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_catalogue_size_is_what_the_readme_says():
    import re

    size = len(CASES) + len(RUN_CASES) + len(COMPARE_CASES) + len(FILE_CASES) + 2  # + the two run-dir refusals below CASES
    claimed = re.search(r"\| bad recipe, key, value, [^|]*\((\d+) cases\)", (REPO / "README.md").read_text())
    assert claimed and int(claimed[1]) == size >= 100, (claimed and claimed[1], size)
