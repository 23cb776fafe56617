"""``run.rehearse``: the Qwen3 cluster recipes shrunk to this machine and run through every
stage (opd_megatron/run/rehearse.py): what it replaces, that it is its own fixed point, the
one-line refusals, and a real rehearsal end to end (tiny BPE models on real SGLang servers, the
learner at tp 2 with dp 2 on gloo (4 torchrun processes; rank 0 launches the servers), the
recipe's distributed weight sync over gloo, a stop after step 2 exactly as a preemption, the
resume, the in-loop benchmarks from local files)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from opd_megatron.config import load_config
from opd_megatron.errors import ConfigError
from opd_megatron.run.preflight import load_and_validate
from opd_megatron.run.rehearse import STOP_STEP, as_overrides, rehearsal_changes
from tests.conftest import PYTHON, REPO

TML = "recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml"
QWEN3 = "recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml"
MATH = REPO / "assets" / "data" / "math-tiny"


@pytest.fixture()
def login_node(tmp_path, monkeypatch):
    """No model weights anywhere (OPD_MODEL_DIR empty), run from the repository."""
    monkeypatch.setenv("OPD_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(REPO)
    return tmp_path


def test_the_qwen3_recipes_rehearse_with_tiny_models_and_their_layout(login_node, capsys):
    for recipe, tp in ((TML, 2), (QWEN3, 2)):
        original = load_config(recipe)
        changes = {key: new for key, _, new in rehearsal_changes(original)}
        assert changes["student.path"].endswith("assets/tiny-bpe/student-init")
        assert changes["teacher.path"].endswith("assets/tiny-bpe/teacher")
        assert changes["data.source"] == "jsonl" and changes["data.path"].endswith("math-tiny/train.jsonl")
        assert changes["cluster.profile"] == "local-cpu" and changes["engines.device"] == "cpu"
        assert "engines.weight_sync" not in changes  # the recipe's transport is what runs
        cfg, _ = load_and_validate(recipe, ["run.rehearse=true"])
        assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp) == (tp, 1, 2)
        assert cfg.engines.weight_sync == "distributed" and cfg.run.num_steps == 4
        assert set(cfg.eval.benchmarks) == set(cfg.eval.benchmark_files)  # every benchmark read locally
        # the rehearsal is its own fixed point: rehearsing it again changes nothing
        assert rehearsal_changes(load_config(recipe, as_overrides(rehearsal_changes(original)))) == []
    out = capsys.readouterr().out
    assert "[rehearse] student.path: '" in out and "-> 2" in out  # it prints what it replaced


def test_rehearsal_refusals_are_one_line_and_start_nothing(login_node, capsys):
    from opd_megatron.cli import main

    with pytest.raises(ConfigError, match=r"^data\.path: hub dataset org/other is not here"):
        rehearsal_changes(load_config(TML, ["data.path=org/other", "data.prompt_key=problem"]))
    with pytest.raises(ConfigError, match=r"^eval\.benchmark_files\.ifeval: no shipped sample"):
        rehearsal_changes(load_config(TML, ["eval.benchmarks=[ifeval]"]))
    assert main(["run", TML, "--rehearse", "rollout.temperature=-1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (REPO / "runs" / "opd-qwen3-8b-to-8b-base-rehearsal").exists()


@pytest.mark.slow
def test_rehearsal_of_the_32b_recipe_runs_every_stage(tmp_path):
    """`opd run recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml --rehearse` on 2 cores: its hub
    dataset (not here) read from the shipped DeepMath-schema sample as jsonl, its four benchmarks
    from the shipped samples in their public schemas. (The TML recipe's rehearsal, through
    sbatch with save_to_disk data: tests/test_slurm_opd_job.py.)"""
    cmd = [PYTHON, "-m", "opd_megatron", "run", str(REPO / QWEN3), "--rehearse", "run.quiet=true",
           f"run.output_dir={tmp_path / 'runs'}", "engines.base_port=28100"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OPD_MODEL_DIR=str(tmp_path / "models"))
    log = tmp_path / "rehearsal.log"
    t0 = time.perf_counter()
    with log.open("w") as out:  # a file, not a pipe (see tests/test_loop_e2e.py)
        code = subprocess.run(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900).returncode
    wall = time.perf_counter() - t0
    text = log.read_text()
    assert code == 0, text[-5000:]
    print(f"rehearsal wall time {wall:.0f} s")
    assert "[rehearse] parallel.tp: 4 -> 2" in text and "[rehearse] parallel.dp: 4 -> 2" in text
    assert "[rehearse] data.source: 'hf' -> 'jsonl'" in text
    assert f"stopped after step {STOP_STEP} as a preempted run does; resuming" in text
    assert "resumed from" in text and "[rehearse] every stage ran (4 learner process(es), weight sync distributed" in text
    run = tmp_path / "runs" / "opd-qwen3-32b-to-8b-base-rehearsal"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # each step once across the resume
    assert all(r["grad_norm"] > 0 for r in train)  # tp 2 x dp 2 ranks all trained (and exited 0)
    benchmarks = ("aime24", "aime25", "math500", "gpqa_diamond")
    mid = [r for r in records if r["step"] == STOP_STEP and "aime24_avg_at_k" in r]
    assert mid and all(f"{b}_avg_at_k" in mid[0] for b in benchmarks)  # the mid-run eval, every benchmark
    final = records[-1]
    assert final.get("final") and all(0.0 <= final[f"{b}_avg_at_k"] <= 1.0 for b in benchmarks)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 4 and summary["teacher_accuracy"] >= 0.5
    config = (run / "config.yaml").read_text()
    assert "rehearse: true" in config and "weight_sync: distributed" in config and "tp: 2" in config
    assert "preset: none" in config and "top_k: 20" in config  # the qwen3 preset's sampling, kept
    assert (run / "report.md").is_file() and (run / "hf" / "config.json").is_file()
