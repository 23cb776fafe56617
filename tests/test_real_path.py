"""The path users take, at toy size, through real components: a dataset in DeepMath's schema
(jsonl and a ``save_to_disk`` directory), a byte-level BPE tokenizer with ChatML tokens and a
Qwen3-style thinking template, the math grader (LaTeX answers), an in-loop benchmark in
AIME'24's schema read from a local file, real SGLang servers and the Megatron learner.

The servers serve the shipped math teacher (assets/tiny-bpe/teacher) and a random-init student
with the same BPE tokenizer (``tiny-random-bpe:student``), passed in with engines.<role>.urls as
the sbatch script does; each run first pushes its own initial weights to the student server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, assert_same_run, untimed
from tests.engines_helpers import start_server

pytestmark = pytest.mark.slow
MATH = REPO / "assets" / "data" / "math-tiny"
MODELS = REPO / "assets" / "tiny-bpe"


@pytest.fixture(scope="module")
def math_servers(tmp_path_factory):
    from opd_megatron.models.tiny import STUDENT_SHAPE
    from opd_megatron.models.tiny_bpe import bpe_shape, save_random_bpe_model
    from opd_megatron.run.prepare import bpe_training_text

    root = tmp_path_factory.mktemp("math")
    student_dir = save_random_bpe_model(root / "student", bpe_shape(STUDENT_SHAPE), seed=2, texts=bpe_training_text())
    student = start_server("student", student_dir, root)
    teacher = start_server("teacher", MODELS / "teacher", root)
    yield student, teacher, root, student_dir
    student.stop()
    teacher.stop()


def _run(math_servers, recipe: str, name: str, *overrides: str):
    student, teacher, tmp, student_dir = math_servers
    args = [PYTHON, "-m", "opd_megatron", "run", str(REPO / "recipes" / recipe), f"run.name={name}",
            f"student.path={student_dir}", f"teacher.path={MODELS / 'teacher'}",
            "student.prepare=null", "teacher.prepare=null", f"data.path={MATH / 'train.jsonl'}",
            f"eval.benchmark_files={{aime24: {MATH / 'aime24.jsonl'}}}",
            f"engines.student.urls=[{student.url}]", f"engines.teacher.urls=[{teacher.url}]",
            "run.num_steps=2", "rollout.prompts_per_step=8", "eval.num_prompts=16", "checkpoint.interval=1",
            *overrides]
    log = tmp / f"{name}.log"
    with log.open("w") as out:  # a file, not a pipe (see tests/test_loop_e2e.py)
        proc = subprocess.run(args, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, timeout=900,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    run_dir = tmp / "runs" / name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return text, run_dir, records, json.loads((run_dir / "summary.json").read_text())


def test_opd_on_the_math_dataset_jsonl_and_save_to_disk_alike(math_servers):
    text, run_dir, records, summary = _run(math_servers, "opd-math-tiny-cpu.yaml", "math-jsonl")
    assert summary["completed"] is True and summary["steps"] == 2
    # The shipped teacher answers the held-out DeepMath-schema rows through the chat template,
    # graded by math-verify on the boxed answer.
    assert summary["teacher_accuracy"] >= 0.8
    assert 0.0 <= summary["student_accuracy_before"] <= 1.0
    final = records[-1]
    assert final.get("final") and "aime24_avg_at_k" in final and 0.0 <= final["aime24_avg_at_k"] <= 1.0
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all("reward_mean" not in r for r in train)  # pure OPD grades no training rollout
    assert all(r["response_len_mean"] > 0 and 0.0 <= r["truncated_frac"] <= 1.0 for r in train)
    # Our progress and results on the console, library warnings in the run's log file.
    assert "student accuracy" in text and "Warning" not in text, text[-3000:]
    assert (run_dir / "logs" / "library.log").stat().st_size > 0
    config = (run_dir / "config.yaml").read_text()
    assert "chat_template: tokenizer" in config and "final_answer" in config

    _, _, disk_records, _ = _run(math_servers, "opd-math-tiny-cpu.yaml", "math-disk", "data.source=disk",
                                 f"data.path={MATH / 'train_disk'}")
    # The same rows, the same run: every count and length equal, every float to 1e-4 (the shared
    # student server's prefix cache, warm from the first run, moves the last bits of a few
    # sampler logprobs).
    assert_same_run(untimed(disk_records), untimed(records))


# The last case is the pipelined step on the real path: step 2's rollouts sampled (BPE tokenizer,
# chat template) while step 1 trains, each scored as soon as it finishes, graded by the math grader
# on the loop's thread, their reverse KL at the learner's logprobs.
PIPELINED = ("rollout.max_staleness=1", "rollout.stream_chunks=1", "objective.kl_at=learner")


@pytest.mark.parametrize("recipe,name,extra", [("rl-math-tiny-cpu.yaml", "math-rl", ()),
                                               ("opd-reward-math-tiny-cpu.yaml", "math-opd-reward", ()),
                                               ("opd-reward-math-tiny-cpu.yaml", "math-pipelined", PIPELINED)])
def test_reward_methods_grade_latex_answers(math_servers, recipe, name, extra):
    _, _, records, summary = _run(math_servers, recipe, name, "rollout.prompts_per_step=4",
                                  "rollout.samples_per_prompt=4", *extra)
    assert summary["completed"] is True
    train = [r for r in records if "loss" in r]
    assert len(train) == 2 and all(0.0 <= r["reward_mean"] <= 1.0 for r in train)
    if extra:
        assert [r["staleness_mean"] for r in train] == [0.0, 1.0]
        assert "overlap:teacher_busy" in train[0]["stage_seconds"]


def test_shipped_math_data_is_what_the_generator_makes(tmp_path):
    import datasets

    from opd_megatron.data import mathgen

    mathgen.write_dataset(tmp_path, mathgen.DATA_SEED, mathgen.NUM_ROWS)
    assert (tmp_path / "train.jsonl").read_bytes() == (MATH / "train.jsonl").read_bytes()
    shipped = datasets.load_from_disk(str(MATH / "train_disk"))
    assert shipped.to_list() == [json.loads(line) for line in (MATH / "train.jsonl").read_text().splitlines()]
    mathgen.write_benchmark(tmp_path / "aime24.jsonl", mathgen.BENCHMARK_SEED, 30,
                            exclude=mathgen.rows(mathgen.DATA_SEED, mathgen.NUM_ROWS))
    assert (tmp_path / "aime24.jsonl").read_bytes() == (MATH / "aime24.jsonl").read_bytes()
    mathgen.write_choice_benchmark(tmp_path / "gpqa_diamond.jsonl", mathgen.BENCHMARK_SEED + 1, 20,
                                   exclude=mathgen.rows(mathgen.DATA_SEED, mathgen.NUM_ROWS))
    assert (tmp_path / "gpqa_diamond.jsonl").read_bytes() == (MATH / "gpqa_diamond.jsonl").read_bytes()
    assert any("\\frac" in json.loads(line)["final_answer"] for line in (MATH / "train.jsonl").open())


def test_shipped_models_are_current():
    """Every model a recipe prepares under assets/ is stamped with its recipe's current hash, so
    no run (and no CI) rebuilds it: a changed prepare recipe must ship its rebuilt model."""
    from opd_megatron.config.load import load_config
    from opd_megatron.run.prepare import is_prepared

    checked = []
    for recipe in sorted((REPO / "recipes").rglob("*.yaml")):
        cfg = load_config(str(recipe), [])
        for model in (cfg.student, cfg.teacher):
            if model.prepare and model.path.startswith("assets/"):
                resolved = dataclasses.replace(model, path=str(REPO / model.path))
                assert is_prepared(resolved), f"{recipe.name}: {model.path} is stale for {model.prepare}"
                checked.append(model.path)
    assert {"assets/tiny-bpe/teacher", "assets/tiny-bpe/student-init"} <= set(checked)


def test_compare_on_the_math_path_tables_every_arm_and_resumes(math_servers):
    """`opd compare` on the real path: an SFT ladder on the math teacher's samples through the
    chat template (evals at steps 1, 2, 4 = doubling data sizes), then from its checkpoint a
    continued-SFT arm and an OPD arm whose lr comes from a sweep, to a target no arm reaches in
    two steps; the table, the sweep, the ladder fit and the plot are written, and a rerun reuses
    every finished run. One seed here (three runs); the seeds' runs are planned in
    tests/test_compare_efficiency.py::test_the_plan_runs_every_seed_at_the_sweeps_pick."""
    student, teacher, tmp, _ = math_servers
    _, ladder, _, _ = _run(math_servers, "sft-math-tiny-cpu.yaml", "ladder", "run.num_steps=4", "eval.interval=1",
                           "rollout.offpolicy_prefetch_steps=2")
    recipe = tmp / "compare-math.yaml"
    recipe.write_text(f"""
base: {REPO / 'recipes' / 'opd-math-tiny-cpu.yaml'}
run: {{name: cmp, num_steps: 2, quiet: true}}
student: {{path: {ladder / 'hf'}, prepare: null}}
teacher: {{path: {MODELS / 'teacher'}, prepare: null}}
data: {{path: {MATH / 'train.jsonl'}}}
rollout: {{prompts_per_step: 8}}
eval: {{interval: 1, num_prompts: 16, benchmark_files: {{aime24: {MATH / "aime24.jsonl"}}}}}
checkpoint: {{interval: 0}}
report: {{plots: false}}
engines: {{student: {{urls: [{student.url}]}}, teacher: {{urls: [{teacher.url}]}}}}
compare:
  ladder: {ladder}
  fit_from_step: 1
  target_accuracy: 0.99
  also_at: [0.01]
  seeds: [1]
  arms:
    sft: [objective.method=sft, objective.kl_estimator=sampled_token, objective.teacher_top_k=0, optim.lr=1.0e-3]
    opd: [objective.method=opd, objective.kl_estimator=full_vocab, optim.lr=2.0e-4]  # not swept: the pick differs
  sweep: true
  sweep_lrs: {{opd: [1.0e-4, 3.0e-4]}}
""")

    def compare(name):
        log = tmp / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.run([PYTHON, "-m", "opd_megatron", "compare", str(recipe)], cwd=tmp, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=900, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert proc.returncode == 0, log.read_text()[-4000:]
        return log.read_text()

    assert "reused" not in compare("compare")
    root = tmp / "runs" / "cmp"
    runs = sorted(p.name for p in root.iterdir() if (p / "summary.json").is_file())
    assert runs == sorted(["opd-lr0.0001-s1", "opd-lr0.0003-s1", "sft-lr0.001-s1"])  # the arm's own 2e-4: never run
    assert _chosen(root) in ("0.0001", "0.0003")
    for name in runs:
        phase = (root / "phases" / f"{name}.yaml").read_text()
        assert "stop_at_accuracy: 0.99" in phase and f"path: {ladder / 'hf'}" in phase
        assert json.loads((root / name / "summary.json").read_text())["steps"] == 2  # not reached: the cap
    md = (root / "compare.md").read_text()
    table = md.split("## The SFT ladder")[0]
    assert "start: SFT from scratch, 32 samples" in table  # 4 steps x 8 prompts
    assert table.count("not reached") >= 2 and "| sft (sft, lr 0.001), from the start | best " in table
    assert "| 1 | 8 |" in md and "| 2 | 16 |" in md and "| 4 | 32 |" in md  # the doubling ladder
    assert "over the 4 evals from step 1 to 4" in md
    sweep = md.split("## Learning-rate sweep")[1].split("## At the published scale")[0]
    assert sweep.count("| opd | ") == 2 and sweep.count("| yes |") == 1  # the sweep, one lr chosen
    assert "| OPD | 70% |" in md and "GPU-hours" in md
    assert "### At 1.0%, from the same runs" in md and list(json.loads((root / "compare.json").read_text())["lower_levels"]) == ["0.01"]
    assert (root / "accuracy_vs_flops.png").stat().st_size > 10_000
    data = json.loads((root / "compare.json").read_text())
    assert [r["arm"] for r in data["rows"]] == ["sft", "opd"] and all(r["reached"] == 0 for r in data["rows"])
    text = compare("rerun")  # everything finished: reused, the same table
    assert text.count("finished earlier, reused") == 3 and "opd run" not in text
    assert (root / "compare.md").read_text().split("## Reused")[0] == md.split("## Reused")[0]


def _chosen(root: Path) -> str:
    md = (root / "compare.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("| opd | ") and line.rstrip().endswith("| yes |"))
    return line.split("|")[2].strip()
