"""Tasks (opd_megatron.data.tasks): one protocol for the generated tasks and for datasets in
jsonl, parquet, save_to_disk and hub form; the held-out split; the graders; no reward for the
methods without one; and every bad dataset input refused in one line by ``opd validate``/``run``
before anything is written. No servers: fakes stand in for them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest

from opd_megatron.cli import main
from opd_megatron.config.schema import Config, DataConfig
from opd_megatron.data import PromptSource, heldout_prompts, make_task
from opd_megatron.data import mathgen
from opd_megatron.data.dataset import heldout_key, heldout_split, load_rows
from opd_megatron.errors import ConfigError
from opd_megatron.types import Rollout
from tests.test_config_bad_inputs import env  # noqa: F401  (the fixture: a valid recipe + model dirs)

NUM_ROWS = 40
DEEPMATH_KEYS = dict(prompt_key="question", answer_key="final_answer", reference_key="r1_solution_1")
SOURCES = ("jsonl", "parquet", "disk", "hf")


def _jsonl(path: Path, rows: List[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sources(root: Path, rows: List[dict]) -> Dict[str, Path]:
    """The same rows as a jsonl file, a parquet file, a save_to_disk directory and a local
    dataset directory that ``datasets.load_dataset`` reads as a hub id."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": _jsonl(root / "train.jsonl", rows), "parquet": root / "train.parquet",
             "disk": root / "train_disk", "hf": root / "hub"}
    pq.write_table(pa.Table.from_pylist(rows), str(paths["parquet"]))
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["disk"]))
    _jsonl(paths["hf"] / "train.jsonl", rows)
    return paths


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Dict[str, Path]:
    return write_sources(tmp_path_factory.mktemp("sources"), mathgen.rows(0, NUM_ROWS))


def _data(source: str, path, **kw) -> DataConfig:
    return DataConfig(source=source, path=str(path), **{**DEEPMATH_KEYS, "num_heldout": 8, **kw})


# -- the protocol, for every source ------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_every_source_is_one_task(sources, source):
    task = make_task(_data(source, sources[source]), seed=3, uses_reward=True, sft_references=True)
    jsonl = make_task(_data("jsonl", sources["jsonl"]), seed=3)
    assert task.grader == "math" and task.num_heldout == 8
    held = task.heldout(100)
    assert len(held) == 8 and held == jsonl.heldout(8)  # the split reads the prompt text only
    assert task.heldout(3) == held[:3]
    train = task.prompts.take(NUM_ROWS - 8)
    assert {p.text for p in train} == {p.text for p in jsonl.prompts.take(NUM_ROWS - 8)}
    assert not {p.text for p in held} & {p.text for p in train}
    # resumable: a source at cursor 5 continues the stream (also past the end: it wraps around)
    again = make_task(_data(source, sources[source]), seed=3).prompts
    again.seek(5)
    assert again.take(40) == (train + train)[5:45]
    # every row's reference solution is graded right against its own answer
    assert all(task.reward(p.reference, p.answer) == 1.0 for p in held + train)
    assert task.reward("<think>\nno idea\n</think>\n\n\\boxed{101}", held[0].answer) == 0.0


def test_rows_name_where_they_came_from(sources):
    rows = {s: load_rows(_data(s, sources[s])) for s in SOURCES}
    assert rows["jsonl"][2].where == f"{sources['jsonl']}:3"  # jsonl: the file line (from 1)
    assert rows["parquet"][2].where == f"{sources['parquet']} row 2"  # datasets: the row index
    assert set(rows["disk"][0].fields) == set(mathgen.FIELDS)
    assert [r.prompt for r in rows["hf"]] == [r.prompt for r in rows["jsonl"]]


def test_generated_tasks_are_unchanged():
    """The generated tasks' stream, cursor and held-out prompts are what PromptSource and
    heldout_prompts gave before tasks existed (checkpoints and seeded runs stay bit-identical)."""
    for source in ("arithmetic", "instruct", "midtrain"):
        data = DataConfig(source=source, chat_ratio=0.5 if source == "midtrain" else 0.0)
        task = make_task(data, seed=7, cursor=3)
        assert task.grader == "arithmetic" and task.num_heldout == 500
        assert task.prompts.cursor == 3 and task.prompts.take(20) == PromptSource(data, 7, cursor=3).take(20)
        assert task.heldout(10) == heldout_prompts(data, 10)
    arith = make_task(DataConfig(), seed=7)
    p = arith.heldout(1)[0]
    assert arith.reward(p.reference, p.answer) == 1.0 and arith.reward("#999", p.answer) == 0.0
    assert make_task(DataConfig(num_heldout=0), seed=7).heldout(5) == []
    with pytest.raises(ConfigError, match="data.grader"):
        make_task(DataConfig(grader="choice"), seed=7)


# -- the held-out split --------------------------------------------------------------------------

def test_heldout_split_is_fixed_disjoint_and_nested(tmp_path):
    rows = mathgen.rows(1, 100)
    dup = dict(rows[10])
    shuffled = rows + [dup]  # one prompt twice: both rows land on one side
    random.Random(0).shuffle(shuffled)
    a = load_rows(_data("jsonl", _jsonl(tmp_path / "a.jsonl", rows + [dup]), num_heldout=20))
    b = load_rows(_data("jsonl", _jsonl(tmp_path / "b.jsonl", shuffled), num_heldout=20))
    held_a, train_a = heldout_split(a, 20, "a")
    held_b, train_b = heldout_split(b, 20, "b")
    assert [r.prompt for r in held_a] == [r.prompt for r in held_b]  # row order does not move it
    texts = {r.prompt.text for r in held_a}
    assert len(texts) == 20 and not texts & {r.prompt.text for r in train_a}
    assert len(held_a) + len(train_a) == len(a) - (dup["question"] in texts)  # a held prompt: once
    small, _ = heldout_split(a, 5, "a")
    assert [r.prompt for r in small] == [r.prompt for r in held_a[:5]]  # more held out keeps the fewer
    # the seed orders training, never the split
    t1 = make_task(_data("jsonl", tmp_path / "a.jsonl", num_heldout=20), seed=1)
    t2 = make_task(_data("jsonl", tmp_path / "a.jsonl", num_heldout=20), seed=2)
    assert t1.heldout(20) == t2.heldout(20)
    s1, s2 = t1.prompts.take(50), t2.prompts.take(50)
    assert s1 != s2 and not texts & {p.text for p in s1 + s2}
    assert heldout_split(a, 0, "a") == ([], a)


def test_a_small_file_is_not_held_out_whole(sources):
    with pytest.raises(ConfigError) as err:
        make_task(_data("jsonl", sources["jsonl"], num_heldout=NUM_ROWS), seed=0)
    msg = str(err.value)
    assert msg.startswith("data.num_heldout:") and f"all {NUM_ROWS} distinct prompts" in msg and "\n" not in msg


# -- graders -----------------------------------------------------------------------------------

def test_math_and_choice_graders(tmp_path):
    half = _jsonl(tmp_path / "half.jsonl", [{"question": "What is 1/2?", "final_answer": "\\frac{1}{2}"},
                                            {"question": "What is 2/4?", "final_answer": "\\frac{1}{2}"}])
    task = make_task(_data("jsonl", half, num_heldout=1), seed=0, uses_reward=True)
    assert task.grader == "math"
    assert task.reward("so the answer is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}") == 1.0
    assert task.reward("<think>\nhalf\n</think>\n\n\\boxed{0.5}", "\\frac{1}{2}") == 1.0
    assert task.reward("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}") == 0.0
    assert task.reward("<think>\n\\boxed{\\frac{1}{2}} cut off", "\\frac{1}{2}") == 0.0  # thinking never closed
    abcd = _jsonl(tmp_path / "abcd.jsonl", [{"question": f"Q{i}", "final_answer": "ABCD"[i % 4]} for i in range(8)])
    choice = make_task(_data("jsonl", abcd, num_heldout=2, grader="choice"), seed=0, uses_reward=True)
    assert choice.reward("Let me think.\nAnswer: B", "B") == 1.0
    assert choice.reward("Answer: C", "B") == 0.0
    assert choice.reward("anything", None) == 0.0


# -- the run's use of a task: no reward without a reward method; eval grades with the task --------

class _CharTok:
    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_training_reward_only_for_reward_methods():
    from opd_megatron.run.session import training_reward
    from opd_megatron.run.stages import Stages

    def never(text, answer):
        raise AssertionError("graded a training rollout of a method without a reward")

    for method, expected in (("opd", False), ("sft", False), ("rl", True), ("opd+reward", True)):
        cfg = Config()
        cfg.objective.method = method
        stages = Stages(cfg, _CharTok(), servers=None, prompts=None, grade=never)
        assert (training_reward(cfg, stages) is not None) == expected, method


def test_loop_without_reward_logs_no_reward_mean():
    import torch

    from opd_megatron.run import loop

    cfg = Config()
    cfg.run.num_steps, cfg.rollout.prompts_per_step, cfg.eval.interval, cfg.checkpoint.interval = 2, 2, 0, 0
    records: list = []

    def sample(prompts):
        return [Rollout(prompt_ids=[5, 6], response_ids=[7, 8], sampler_logprobs=[-1.0, -1.0], group_id=i,
                        answer=p.answer) for i, p in enumerate(prompts)]

    def score(rollouts):
        for r in rollouts:
            r.teacher_logprobs = [-0.5, -0.5]

    learner = SimpleNamespace(train_step=lambda batch: {"loss": float(torch.tensor(0.0))})
    flops = SimpleNamespace(add_step=lambda *a: None, as_dict=lambda: {})
    log = SimpleNamespace(write=lambda rec, print_line=True: records.append(rec))
    for reward, logged in ((None, False), (lambda rollouts: [setattr(r, "reward", 1.0) for r in rollouts], True)):
        records.clear()
        c = loop.Components(cfg=cfg, prompts=PromptSource(cfg.data, 0), sample=sample, score=score, reward=reward,
                            learner=learner, sync=lambda v: None, evaluate=lambda s: {}, teacher_accuracy=lambda: None,
                            state=None, flops=flops, log=log, export_dir=None)
        assert loop.train(c, 0) == 2
        assert all(("reward_mean" in r) == logged for r in records) and len(records) == 2


def test_evaluator_grades_heldout_with_the_task_and_reads_benchmark_files(tmp_path):
    from opd_megatron.run.evaluator import Evaluator
    from opd_megatron.run.stages import Stages

    rows = [{"question": f"Simplify {i}/{2 * i}.", "final_answer": "\\frac{1}{2}"} for i in range(1, 11)]
    task = make_task(_data("jsonl", _jsonl(tmp_path / "d.jsonl", rows), num_heldout=4), seed=0)
    aime = _jsonl(tmp_path / "aime24.jsonl", [{"problem": "What is 6*7?", "answer": "42", "id": "a"}])
    cfg = Config()
    cfg.eval.num_prompts, cfg.eval.benchmarks, cfg.eval.benchmark_files = 4, ["aime24"], {"aime24": str(aime)}
    tok = _CharTok()
    answers = iter(["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{2}", "\\frac{1}{3}"])

    class Client:
        def generate(self, ids, samples_per_prompt, **kw):
            return [Rollout(prompt_ids=p, response_ids=[ord(c) for c in "\\boxed{42}"], sampler_logprobs=[],
                            group_id=i) for i, p in enumerate(ids) for _ in range(samples_per_prompt)]

    servers = SimpleNamespace(student=Client(), teacher=None, synced_version=0)
    stages = Stages(cfg, tok, servers=servers, prompts=task.prompts, grade=task.reward)
    stages.sample = lambda prompts, **kw: [Rollout(prompt_ids=[], response_ids=[ord(c) for c in next(answers)],
                                                   sampler_logprobs=[], group_id=i, answer=p.answer)
                                           for i, p in enumerate(prompts)]
    out = Evaluator(cfg, stages, tok, task).evaluate(0)
    assert out["accuracy"] == 0.5 and out["reverse_kl"] is None  # 0.5 and \frac{1}{2} right
    assert out["aime24_avg_at_k"] == 1.0  # the local file, not the hub
    none = make_task(_data("jsonl", tmp_path / "d.jsonl", num_heldout=0), seed=0)
    cfg.eval.benchmarks, cfg.eval.benchmark_files = [], {}
    assert Evaluator(cfg, stages, tok, none).evaluate(0) == {"reverse_kl": None}  # no in-loop accuracy


# -- bad inputs: one line, exit 2, nothing written ------------------------------------------------

def _overrides(source: str, path, **kw) -> List[str]:
    keys = {**DEEPMATH_KEYS, "num_heldout": 8, **kw}
    return [f"data.source={source}", f"data.path={path}", *(f"data.{k}={v}" for k, v in keys.items())]


def _rows_file(d: Path, name: str = "data/train.jsonl", rows=None) -> Path:
    return _jsonl(d / name, mathgen.rows(0, NUM_ROWS) if rows is None else rows)


def _malformed(d: Path) -> None:
    f = _rows_file(d)
    lines = f.read_text().splitlines()
    lines[2] = lines[2][:-1]  # line 3 loses its closing brace
    f.write_text("\n".join(lines) + "\n")


def _long_prompt(d: Path) -> None:
    rows = mathgen.rows(0, NUM_ROWS)
    rows[1]["question"] = "1+" * 150 + "1="  # 302 characters: one token each with the char tokenizer
    _rows_file(d, rows=rows)


def _drop(key: str, index: int):
    def setup(d: Path) -> None:
        rows = mathgen.rows(0, NUM_ROWS)
        rows[index].pop(key)
        _rows_file(d, rows=rows)
    return setup


def _row_index(heldout: bool) -> int:
    """A row of the mathgen file that the split (8 held out) holds out, or one it trains on."""
    questions = [r["question"] for r in mathgen.rows(0, NUM_ROWS)]
    held = set(sorted(questions, key=lambda t: (heldout_key(t), t))[:8])
    return next(i for i, q in enumerate(questions) if (q in held) == heldout)


def _not_parquet(d: Path) -> None:
    (d / "data").mkdir()
    (d / "data/train.parquet").write_text("not parquet\n")


JSONL = "data/train.jsonl"
RL = ["objective.method=rl", "objective.reward_weight=1.0", "teacher.path="]
BAD_DATA = [
    ("malformed-jsonl-line", _overrides("jsonl", JSONL), _malformed, f"{JSONL}:3"),
    ("row-without-prompt", _overrides("jsonl", JSONL), _drop("question", 4), f"'question' missing in {JSONL}:5"),
    ("heldout-row-without-answer", _overrides("jsonl", JSONL), lambda d: _drop("final_answer", _row_index(True))(d),
     "data.answer_key: 'final_answer' missing"),
    ("rl-row-without-answer", _overrides("jsonl", JSONL, num_heldout=0) + RL,
     _drop("final_answer", 6), f"{JSONL}:7"),
    ("sft-row-without-reference", _overrides("jsonl", JSONL) + ["objective.method=sft", "data.sft_targets=reference"],
     lambda d: _drop("r1_solution_1", _row_index(False))(d), "data.reference_key: 'r1_solution_1' missing"),
    ("hf-without-path", ["data.source=hf"], None, "data.path: missing"),
    ("jsonl-not-found", _overrides("jsonl", "data/nope.jsonl"), None, "data.path"),
    ("disk-not-found", _overrides("disk", "data/nope_disk"), None, "data.path"),
    ("not-parquet", _overrides("parquet", "data/train.parquet"), _not_parquet, "data/train.parquet"),
    ("prompt-too-long", _overrides("jsonl", JSONL), _long_prompt, f"{JSONL}:2"),
    ("heldout-whole-file", _overrides("jsonl", JSONL, num_heldout=NUM_ROWS), _rows_file, "data.num_heldout"),
    ("eval-beyond-heldout", _overrides("jsonl", JSONL, num_heldout=2), _rows_file, "eval.num_prompts"),
    ("arithmetic-grader-on-latex", _overrides("jsonl", JSONL, grader="arithmetic", num_heldout=39), _rows_file,
     "data.grader=arithmetic"),
    ("top-k-above-vocab", ["objective.kl_estimator=full_vocab", "objective.teacher_top_k=1000"], None,
     "objective.teacher_top_k"),
    ("benchmark-file-missing", ["eval.benchmarks=[aime24]", "eval.benchmark_files={aime24: data/aime24.jsonl}"],
     None, "eval.benchmark_files.aime24"),
    ("benchmark-file-not-run", ["eval.benchmark_files={aime24: recipe.yaml}"], None, "eval.benchmark_files.aime24"),
]


@pytest.mark.parametrize("case_id,overrides,setup,needle", BAD_DATA, ids=[c[0] for c in BAD_DATA])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_data_exits_2_in_one_line_and_writes_nothing(env, capsys, command, case_id, overrides, setup, needle):  # noqa: F811
    if setup is not None:
        setup(env)
    before = sorted(str(p.relative_to(env)) for p in env.rglob("*"))
    code = main([command, "recipe.yaml", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("opd: error: ") and needle in err, err
    assert sorted(str(p.relative_to(env)) for p in env.rglob("*")) == before  # no run directory


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_validates(env, capsys, source):  # noqa: F811
    paths = write_sources(env / "data", mathgen.rows(0, NUM_ROWS))
    aime = _jsonl(env / "bench/aime24.jsonl", [{"problem": "What is 6*7?", "answer": "42"}])
    assert main(["validate", "recipe.yaml", *_overrides(source, paths[source]), *RL,
                 "eval.benchmarks=[aime24]", f"eval.benchmark_files={{aime24: {aime}}}"]) == 0, capsys.readouterr().err
    assert "# resolved config" in capsys.readouterr().out
    assert not (env / "runs").exists()


def test_sft_on_dataset_references_validates(env):  # noqa: F811
    _rows_file(env)
    assert main(["validate", "recipe.yaml", *_overrides("jsonl", JSONL), "objective.method=sft",
                 "data.sft_targets=reference"]) == 0


def test_hub_id_is_not_downloaded_by_preflight(env, monkeypatch):  # noqa: F811
    """A hub id (no local path) passes preflight without a download; the run reads its rows."""
    import opd_megatron.data.dataset as ds

    def no_download(data):
        raise AssertionError("preflight downloaded a hub dataset")

    monkeypatch.setattr(ds, "_datasets_rows", no_download)
    assert main(["validate", "recipe.yaml", *_overrides("hf", "zwhe99/DeepMath-103K")]) == 0
