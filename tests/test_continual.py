"""The continual-learning recipe: the generated facts / instructions task, the mid-training data
stream, the phase plan, and a short `opd continual` end to end (real SGLang servers launched by
each phase, the real learner) that writes the base -> mid-trained -> +OPD table and resumes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from opd_megatron.config.schema import DataConfig
from opd_megatron.config.validate import check_ranges
from opd_megatron.data import PromptSource, heldout_prompts
from opd_megatron.data import arithmetic, knowledge
from opd_megatron.run.preflight import load_and_validate
from tests.conftest import PYTHON, REPO

BASE = REPO / "assets/tiny/instruct-base"


def test_instruction_checkers_accept_references_and_reject_other_formats():
    p = arithmetic.solve("8-1*5*6")
    steps, answer = knowledge.instruct(p, "steps"), knowledge.instruct(p, "answer")
    assert (steps.prompt, answer.prompt) == ("8-1*5*6=", "#8-1*5*6=")
    assert knowledge.complies("steps", steps.reference) and knowledge.complies("answer", answer.reference)
    assert not knowledge.complies("answer", steps.reference)  # a trace where only the answer was asked
    assert not knowledge.complies("steps", answer.reference)
    assert not knowledge.complies("steps", "1*5=5;5*6=30 ;417=52")  # drifted into document text
    assert knowledge.complies("answer", "#12") and not knowledge.complies("answer", "#12 ;417=5")
    assert knowledge.kind_of("#1+2=") == "answer" and knowledge.kind_of("1+2=") == "steps"


def test_facts_are_seeded_distinct_and_recalled_by_leading_number():
    a, b = knowledge.facts(1, 200), knowledge.facts(2, 200)
    assert a == knowledge.facts(1, 200) and a != b
    assert len({k for k, _ in a}) == 200 and all(100 <= int(k) <= 999 and 0 <= int(v) < 100 for k, v in a)
    head, rest = knowledge.document(a[:3])
    assert head + rest == " ".join(f";{k}={v}" for k, v in a[:3])
    assert knowledge.recalled(" 52 ;1", "52") and not knowledge.recalled("5", "52") and not knowledge.recalled("#", "5")


def test_midtrain_stream_mixes_chat_at_the_ratio_and_seeks():
    data = DataConfig(source="midtrain", chat_ratio=0.3, num_facts=50)
    src = PromptSource(data, seed=3)
    first = src.take(400)
    chat = [p for p in first if p.answer is not None]
    assert 0.22 < len(chat) / 400 < 0.38
    heldout = {p.text.lstrip("#") for p in heldout_prompts(data, 500)}
    assert not any(p.text.lstrip("#") in heldout for p in chat)  # never the held-out split
    facts = dict(knowledge.facts(0, 50))
    docs = [p for p in first if p.answer is None]
    assert all((p.text + p.reference).startswith(";") for p in docs)
    assert all(facts[p.text[1:-1]] == p.reference.split(" ")[0] for p in docs)
    src.seek(100)
    assert src.take(5) == first[100:105]
    assert PromptSource(data, seed=3).take(400) == first  # seeded
    assert all(p.answer is None for p in PromptSource(DataConfig(source="midtrain"), 3).take(100))  # ratio 0


def test_midtrain_replay_draws_documents_from_the_earlier_sets():
    plain = DataConfig(source="midtrain", num_facts=50, facts_seed=3)
    replay = DataConfig(source="midtrain", num_facts=50, facts_seed=3, replay_ratio=0.4,
                        replay_facts_seeds=[1, 2])
    current = dict(knowledge.facts(3, 50))
    earlier = {**dict(knowledge.facts(1, 50)), **dict(knowledge.facts(2, 50))}
    docs = PromptSource(replay, seed=3).take(400)
    keys = [[pair.split("=")[0] for pair in (p.text + p.reference)[1:].split(" ;")] for p in docs]
    old = [k for k in keys if all(x in earlier for x in k) and not any(x in current for x in k)]
    assert 0.32 < len(old) / 400 < 0.48
    assert all(all(x in current for x in k) or all(x in earlier for x in k) for k in keys)
    assert PromptSource(plain, seed=3).take(50) == PromptSource(DataConfig(
        source="midtrain", num_facts=50, facts_seed=3, replay_facts_seeds=[1]), seed=3).take(50)  # ratio 0: unchanged


def test_phase_plan_chains_students_and_teachers(tmp_path):
    from opd_megatron.run.continual import phases

    cfg, _ = load_and_validate(str(REPO / "recipes/continual-tiny-cpu.yaml"),
                               ["continual.rounds=2", f"run.output_dir={tmp_path}"])
    plan = dict(phases(cfg, tmp_path / "c"))
    assert list(plan) == ["round1-midtrain", "round1-opd", "round2-midtrain", "round2-opd"]
    base = cfg.student.path
    assert plan["round1-midtrain"].student.path == base
    assert plan["round1-midtrain"].objective.method == "sft" and plan["round1-midtrain"].data.source == "midtrain"
    assert plan["round1-opd"].teacher.path == base  # the checkpoint round 1 began from
    assert plan["round1-opd"].student.path.endswith("round1-midtrain/hf")
    assert plan["round2-midtrain"].student.path.endswith("round1-opd/hf")
    assert plan["round2-opd"].teacher.path.endswith("round1-opd/hf")
    assert plan["round2-midtrain"].data.facts_seed == plan["round1-midtrain"].data.facts_seed + 1
    assert plan["round1-midtrain"].data.replay_facts_seeds == []
    assert plan["round2-midtrain"].data.replay_facts_seeds == [plan["round1-midtrain"].data.facts_seed]
    replaying = dict(phases(load_and_validate(str(REPO / "recipes/continual-tiny-cpu.yaml"),
                                              ["data.replay_ratio=0.25"])[0], tmp_path / "c"))
    assert replaying["round1-midtrain"].data.replay_ratio == 0.0  # nothing earlier to replay
    assert replaying["round2-midtrain"].data.replay_ratio == 0.25
    check_ranges(replaying["round2-midtrain"])  # the replay checks pass on the generated phase
    plan_base = dict(phases(load_and_validate(str(REPO / "recipes/continual-tiny-cpu.yaml"),
                                              ["continual.teacher=base"])[0], tmp_path / "c"))
    assert plan_base["round2-opd"].teacher.path == base


@pytest.mark.slow
def test_continual_short_form_end_to_end_and_resume(tmp_path):
    cmd = [PYTHON, "-m", "opd_megatron", "continual", str(REPO / "recipes/continual-tiny-cpu.yaml"),
           "continual.rounds=1", "continual.midtrain_steps=4", "continual.opd_steps=2",
           "continual.eval_facts=30", "continual.eval_instructions=30", "rollout.prompts_per_step=8",
           "eval.num_prompts=8", "checkpoint.interval=0", "run.quiet=true", "engines.device=cpu",
           "engines.base_port=31900", "data.chat_ratio=0.25", "run.name=continual-ci",
           "eval.benchmarks=[arithmetic]",  # on clusters: ifeval, aime24, ...
           f"student.path={BASE}", f"teacher.path={BASE}", "student.prepare=null", "teacher.prepare=null"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "continual.log"
    with log.open("w") as out:  # a file, not a pipe (see test_loop_e2e.py)
        code = subprocess.run(cmd + [f"run.output_dir={tmp_path / 'runs'}"], cwd=tmp_path, stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=900).returncode
    text = log.read_text()
    assert code == 0, text[-4000:]
    root = tmp_path / "runs/continual-ci"
    results = json.loads((root / "continual.json").read_text())
    assert list(results) == ["base", "round1-midtrain", "round1-opd"]
    for row in results.values():
        assert 0.0 <= row["recall"]["round1"] <= 1.0 and 0.0 <= row["follows"] <= 1.0
    assert results["base"]["follows"] > 0.8  # the base follows both instructions
    assert results["base"]["recall"]["round1"] < 0.1  # and cannot know the new facts
    for phase in ("round1-midtrain", "round1-opd"):
        summary = json.loads((root / phase / "summary.json").read_text())
        assert summary["completed"], phase
    assert json.loads((root / "round1-midtrain/summary.json").read_text())["method"] == "sft"
    table = (root / "continual.md").read_text()
    assert "| round1-opd |" in table and "IF: answer only" in table and "| arithmetic |" in table
    for row in results.values():  # the phases' eval.benchmarks as a column, base included
        assert 0.0 <= row["benchmarks"]["arithmetic"] <= 1.0
    # a rerun skips the finished phases and reuses their evaluations
    with log.open("w") as out:
        code = subprocess.run(cmd + [f"run.output_dir={tmp_path / 'runs'}"], cwd=tmp_path, stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=300).returncode
    assert code == 0 and "opd run" not in log.read_text()
    assert json.loads((root / "continual.json").read_text()) == results


def test_continual_rejects_a_non_distillation_method(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "opd_megatron", "continual", str(REPO / "recipes/continual-tiny-cpu.yaml"),
                           "objective.method=rl", f"run.output_dir={tmp_path}"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert proc.returncode == 2 and "objective.method" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("overrides,key", [(["objective.method=rl", "objective.reward_weight=1"], "objective.method"),
                                           (["objective.method=sft"], "objective.method"),
                                           (["data.num_heldout=0"], "data.num_heldout")])
def test_continual_refuses_what_it_cannot_run_before_writing(tmp_path, overrides, key):
    from opd_megatron.config import load_config
    from opd_megatron.errors import ConfigError
    from opd_megatron.methods import method_of
    from opd_megatron.run.continual import run_continual

    cfg = load_config(str(REPO / "recipes" / "continual-tiny-cpu.yaml"), [f"run.output_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=key):
        run_continual(cfg)
    assert not any(tmp_path.iterdir())
    assert method_of(load_config(str(REPO / "recipes" / "continual-tiny-cpu.yaml"),
                                 ["objective.method=opd+reward", "objective.reward_weight=0.5"]).objective).distills
