"""The compute-efficiency arithmetic of ``opd compare`` (opd_megatron.report.efficiency): the
ladder's log-linear fit, the FLOPs at the target crossing, the blog's CE ratios, GPU-hours."""

import math

import pytest

from opd_megatron.plan.flops import tml_table
from opd_megatron.report import efficiency as eff


def _rec(step, acc, teacher, student):
    return {"step": step, "accuracy": acc,
            "flops": {"teacher_sampling": teacher, "teacher_scoring": 0.0, "student_sampling": 0.0,
                      "learner_train": student, "learner_recompute": 0.0}}


def test_fit_recovers_a_log_linear_curve_and_inverts_it():
    samples = [1024, 2048, 4096, 8192]
    acc = [0.40 + 0.05 * math.log2(s / 1024) for s in samples]
    fit = eff.fit_log_linear(samples, acc)
    assert fit.slope == pytest.approx(0.05) and fit.r2 == pytest.approx(1.0)
    assert fit.samples_for(0.60) == pytest.approx(8192 * 2)
    assert fit.accuracy_at(4096) == pytest.approx(0.50)
    assert eff.fit_log_linear([1, 2], [0.5, 0.4]).samples_for(0.9) is None  # a falling fit gives no answer


def test_doubling_points_are_the_ladder_sizes():
    points = [{"step": s, "accuracy": 0.0, "teacher_flops": 0.0, "student_flops": 0.0} for s in range(0, 300, 32)]
    assert [p["step"] for p in eff.doubling_points(points, 32)] == [32, 64, 128, 256]
    assert [p["step"] for p in eff.doubling_points(points, 64)] == [64, 128, 256]


def test_reach_interpolates_every_role_between_the_evals_around_the_target():
    records = [{"step": 0, "accuracy": 0.5}, _rec(10, 0.6, 100.0, 50.0), _rec(20, 0.8, 200.0, 150.0),
               _rec(20, 0.8, 200.0, 150.0) | {"final": True}]
    points = eff.eval_points(records)
    assert [p["step"] for p in points] == [0, 10, 20]  # the final record counts once
    hit = eff.reach(points, 0.7)
    assert hit == pytest.approx({"step": 15.0, "teacher_flops": 150.0, "student_flops": 100.0, "accuracy": 0.7})
    assert eff.reach(points, 0.5)["step"] == 0  # already there at the start
    assert eff.reach(points, 0.81) is None


def test_compute_efficiency_counts_sft_from_scratch_as_the_blog_does():
    target = 0.7
    start = {"step": 100, "accuracy": 0.6, "teacher_flops": 10.0, "student_flops": 5.0}

    def arm(name, runs):
        return eff.arm_result(name, name, 1e-3, [(s, recs, {"wall_s": 10.0 * s}) for s, recs in runs], target)

    sft = arm("sft", [(1, [{"step": 0, "accuracy": 0.6}, _rec(10, 0.7, 20.0, 10.0)]),
                      (2, [{"step": 0, "accuracy": 0.6}, _rec(10, 0.7, 40.0, 20.0)])])
    opd = arm("opd", [(1, [{"step": 0, "accuracy": 0.6}, _rec(5, 0.7, 2.0, 3.0)]),
                      (2, [{"step": 0, "accuracy": 0.6}, _rec(5, 0.7, 2.0, 3.0)])])
    rl = arm("rl", [(1, [{"step": 0, "accuracy": 0.6}, _rec(50, 0.65, 0.0, 9.0)]),
                    (2, [{"step": 0, "accuracy": 0.6}, _rec(50, 0.66, 0.0, 9.0)])])
    rows = {r["arm"]: r for r in eff.efficiency_rows([sft, opd, rl], "sft", start)}
    ce = rows["opd"]["ce"]
    # seed 1: SFT from scratch = 5 + 10 student, 10 + 20 teacher; OPD's own FLOPs 5
    assert ce["student"] == pytest.approx([15 / 5, 25 / 5])
    assert ce["with_teacher"] == pytest.approx([45 / 5, 75 / 5])
    assert ce["inc_student"] == pytest.approx([10 / 5, 20 / 5])
    assert ce["inc_with_teacher"] == pytest.approx([30 / 5, 60 / 5])
    assert rows["sft"]["ce"]["inc_student"] == pytest.approx([1 / 3, 1 / 3])
    assert rows["rl"]["reached"] == 0 and rows["rl"]["ce"]["student"] == []
    table = eff.markdown_table(list(rows.values()), target, start, 6400, None, 64, (0.1, 0.05), "sft")
    rl_line = next(line for line in table.splitlines() if line.startswith("| rl"))
    assert "not reached" in rl_line and "best 65.5% ± 0.7%" in rl_line
    opd_line = next(line for line in table.splitlines() if line.startswith("| opd"))
    assert "4x ± 1.4x" in opd_line and "12x ± 4.2x" in opd_line
    scratch = next(line for line in table.splitlines() if "SFT from scratch to the target, measured" in line)
    assert "| 40 ± 14.1 | 20 ± 7.07 | 1x | 1x |" in scratch  # the blog's SFT-2M row: FLOPs from scratch


def test_published_rows_in_gpu_hours_follow_the_flops_account():
    table = tml_table()
    rows = {r["row"]: r for r in eff.scale_rows(table, 989.0, 0.4, 0.1)}
    opd = table["rows"]["OPD"]["roles"]
    want = (opd["student_sampling"] / 0.1 + (opd["learner_train"] + opd["teacher_scoring"]) / 0.4) / (989e12 * 3600)
    assert rows["OPD"]["gpu_hours"] == pytest.approx(want)
    # SFT samples its data with the teacher at the decode MFU: its GPU-hour ratio exceeds the FLOPs one
    assert rows["SFT-2M"]["gpu_hours"] / rows["OPD"]["gpu_hours"] > table["ce_with_teacher_sampling"]


def test_an_arm_that_reaches_a_target_sft_misses_gets_a_lower_bound():
    start = {"step": 100, "accuracy": 0.6, "teacher_flops": 10.0, "student_flops": 5.0}
    sft = eff.arm_result("sft", "sft", 1e-3, [(1, [{"step": 0, "accuracy": 0.6}, _rec(30, 0.65, 30.0, 15.0)], None)], 0.7)
    opd = eff.arm_result("opd", "opd", 1e-4, [(1, [{"step": 0, "accuracy": 0.6}, _rec(5, 0.7, 2.0, 3.0)], None)], 0.7)
    rows = {r["arm"]: r for r in eff.efficiency_rows([sft, opd], "sft", start)}
    assert rows["opd"]["ce_lower_bound"] and rows["opd"]["ce"]["inc_student"] == pytest.approx([15 / 5])
    table = eff.markdown_table(list(rows.values()), 0.7, start, 6400, None, 64, (0.1, 0.05), "sft")
    assert "| > 4x | > 12x | > 3x | > 9x |" in next(line for line in table.splitlines() if line.startswith("| opd"))
    assert "SFT from scratch to the target, measured" not in table  # SFT never got there


@pytest.mark.parametrize("recipe,start,steps,every", [
    ("compare-tiny-cpu.yaml", "sft-start", 1024, 32),           # the shipped comparison
    ("compare-1layer-tiny-cpu.yaml", "sft-start-1layer", 2048, 64),  # the one-layer miniature
])
def test_the_shipped_start_carries_its_ladder(tmp_path, recipe, start, steps, every):
    """A comparison's start (assets/tiny/<start>) holds its ladder's record (prepare-run/), which
    `opd compare` reads by default, and its last eval is the checkpoint shipped (the run's end)."""
    import json

    from opd_megatron.config.load import load_config
    from opd_megatron.run.comparison import ladder_dir, read_ladder
    from opd_megatron.run.prepare import keep_run_record
    from tests.conftest import REPO

    cfg = load_config(str(REPO / "recipes" / recipe))
    cfg.student.path = str(REPO / cfg.student.path)
    assert ladder_dir(cfg) == REPO / "assets/tiny" / start / "prepare-run"
    records, summary, ladder_cfg = read_ladder(cfg)
    assert summary["completed"] and summary["steps"] == ladder_cfg.run.num_steps == steps
    assert ladder_cfg.optim.schedule == "constant" and ladder_cfg.objective.method == "sft"
    points = eff.eval_points(records)
    assert [p["step"] for p in eff.doubling_points(points, every)] == [every * 2 ** i for i in range(6)]
    assert points[-1]["accuracy"] == summary["student_accuracy_after"]
    keep_run_record(REPO / "assets/tiny" / start / "prepare-run", tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "config.yaml", "environment.json", "metrics.jsonl", "summary.json"]
    assert json.loads((tmp_path / "copy/summary.json").read_text()) == summary


def test_the_plan_runs_every_seed_at_the_sweeps_pick(tmp_path, monkeypatch):
    """The shipped comparison's plan, validated with no server: with compare.sweep each arm runs
    its sweep rates at the first seed, its own rate at every seed; an lr the sweep picks gets the
    other seeds at that lr, the first seed's run being the sweep's own. Every run stops at the
    target, keeps its arm's step cap and seed, and lives under the comparison's directory."""
    from opd_megatron.run.comparison import Plan, run_name
    from opd_megatron.run.preflight import load_and_validate
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    recipe, overrides = "recipes/compare-tiny-cpu.yaml", ["compare.sweep=true", f"run.output_dir={tmp_path}"]
    cfg, _ = load_and_validate(recipe, overrides)
    c = cfg.compare
    plan = Plan(cfg, recipe, overrides)
    assert c.sweep and len(c.seeds) == 3
    expected = set()
    for arm, lrs in c.sweep_lrs.items():  # any rate may be the pick: each at every seed
        expected |= {run_name(arm, lr, seed) for lr in [*lrs, plan.base_lr[arm]] for seed in c.seeds}
    assert set(plan.phases) == expected
    for name, p in plan.phases.items():
        arm = name.rsplit("-lr", 1)[0]
        assert p.run.name == name and name.endswith(f"-s{p.run.seed}") and f"-lr{p.optim.lr:g}-" in name
        assert p.eval.stop_at_accuracy == c.target_accuracy and p.run.output_dir == str(plan.root)
        assert f"run.num_steps={p.run.num_steps}" in c.arms[arm] and not p.compare.arms
    pick = next(lr for lr in c.sweep_lrs["sft"] if lr != plan.base_lr["sft"])
    runs = plan.arm_phases("sft", pick)
    assert [(seed, name) for seed, name, _ in runs] == [(s, run_name("sft", pick, s)) for s in c.seeds]
    assert runs[0][2] is plan.phases[run_name("sft", pick, c.seeds[0])]  # the sweep's run, not a copy
    assert [p.run.seed for _, _, p in runs] == list(c.seeds) and {p.optim.lr for _, _, p in runs} == {pick}


def test_a_finished_run_is_reused_only_for_the_settings_it_ran(tmp_path, monkeypatch):
    """`opd compare` / `opd continual` skip a phase whose run finished with the same settings and
    step count; one finished under an edited recipe (another lr, another cap) is refused by
    name before anything runs, never reported as the run asked for; an unfinished one resumes."""
    import copy
    import json

    from opd_megatron.config.load import load_config
    from opd_megatron.errors import ConfigError
    from opd_megatron.run.rundir import open_run_dir, reusable
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    cfg = load_config("recipes/opd-tiny-cpu.yaml")
    cfg.run.output_dir, cfg.run.name = str(tmp_path), "arm-s1"
    run_dir = open_run_dir(cfg, None)
    assert not reusable(cfg)  # started, not finished: `opd run` resumes it
    (run_dir / "summary.json").write_text(json.dumps({"completed": True, "steps": cfg.run.num_steps}))
    assert reusable(cfg)
    moved = copy.deepcopy(cfg)
    moved.engines.student.urls, moved.run.quiet = ["http://127.0.0.1:1"], True  # where it runs: no matter
    assert reusable(moved)
    for key, value in (("optim.lr", cfg.optim.lr * 3), ("run.num_steps", cfg.run.num_steps // 2)):
        other = copy.deepcopy(cfg)
        section, name = key.split(".")
        setattr(getattr(other, section), name, value)
        with pytest.raises(ConfigError, match=r"run\.name: .*arm-s1 holds a finished run with other settings"):
            reusable(other)
