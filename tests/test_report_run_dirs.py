"""report.md from fabricated run directories: complete, failed/partial, and --compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opd_megatron import report
from opd_megatron.errors import ConfigError
from opd_megatron.report import METRIC_KEYS, cli_main, flops_to_reach, read_metrics, write_report

CONFIG_YAML = """run:
  name: {name}
  seed: 1234
objective:
  method: {method}
"""


def make_run(root: Path, name: str, method: str, curve, *, teacher_acc=0.9, teacher_flops_per_step=0.0,
             student_flops_per_step=1e9, summary=True, truncate=False) -> Path:
    """A run dir like the loop writes: step-0 eval, one record per step, evals at curve steps."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(CONFIG_YAML.format(name=name, method=method))
    lines = [{"step": 0, "accuracy": curve[0], "reverse_kl": 0.4, "teacher_accuracy": teacher_acc}]
    for step in range(1, len(curve)):
        t, s = teacher_flops_per_step * step, student_flops_per_step * step
        rec = {"step": step, "loss": 1.0 / step, "grad_norm": 0.5, "lr": 1e-4,
               "reverse_kl_sampled": 0.4 / step,
               "flops": {"student_sampling": s / 4, "teacher_sampling": t / 2, "teacher_scoring": t / 2,
                         "learner_train": 3 * s / 4, "learner_recompute": 0.0,
                         "teacher": t, "student": s, "total": t + s},
               "stage_seconds": {"rollout": 0.2, "teacher_score": 0.1, "train": 0.3}}
        rec.update(accuracy=curve[step], reverse_kl=0.4 / (step + 1))
        lines.append(rec)
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if truncate:
        text += '{"step": 99, "loss": 0.'  # killed mid-write
    (d / "metrics.jsonl").write_text(text)
    if summary:
        last = lines[-1]
        (d / "summary.json").write_text(json.dumps({
            "completed": True, "method": method, "steps": len(curve) - 1, "teacher_accuracy": teacher_acc,
            "student_accuracy_before": curve[0], "student_accuracy_after": curve[-1],
            "reverse_kl_before": 0.4, "reverse_kl_after": last["reverse_kl"], "flops": last.get("flops", {}),
            "stage_seconds": {"rollout": 1.0, "train": 2.0}, "num_skipped_steps": 0, "wall_s": 12.5}))
    return d


def test_complete_run_report(tmp_path):
    d = make_run(tmp_path, "opd-run", "opd", [0.5, 0.6, 0.7, 0.8], teacher_flops_per_step=2e9)
    report.write_environment(d)
    out = write_report(d)
    text = out.read_text()
    assert out == d / "report.md"
    assert "Status: **completed**" in text and "Method: opd" in text
    assert "| teacher accuracy | 90.0% |" in text
    assert "50.0% -> 80.0%" in text
    # 3 steps x (1e9 student + 2e9 teacher); learner_train is 3/4 of the student's.
    assert "| learner_train | 2.250e+09 | 25.0% |" in text
    assert "| **total** | 9.000e+09 | 100.0% |" in text
    assert "seed" in text and "run.seed=1234" in text
    assert "captured at run start" in text and "torch " in text and "megatron-core" in text
    assert "```yaml" in text and "method: opd" in text
    import matplotlib.image as mpimg

    for name in ("accuracy_vs_flops.png", "reverse_kl_vs_step.png", "stage_seconds.png"):
        assert f"]({name})" in text
        img = mpimg.imread(d / name)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # a real, non-blank image


def test_failed_run_with_truncated_metrics_and_no_summary(tmp_path):
    d = make_run(tmp_path, "killed", "opd", [0.5, 0.55, 0.6], summary=False, truncate=True)
    records, bad = read_metrics(d / "metrics.jsonl")
    assert len(records) == 3 and bad == 1
    text = write_report(d, plots=False).read_text()
    assert "**incomplete**: no summary.json" in text
    assert "1 unreadable lines skipped" in text
    assert "50.0% -> 60.0%" in text  # reconstructed from the records
    assert "collected when this report was written" in text
    assert "No plots" in text


def test_failed_run_summary_error_and_no_metrics(tmp_path):
    d = tmp_path / "crashed"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"completed": False, "wall_s": 3.0,
                                                "error": "student server died"}))
    text = write_report(d).read_text()
    assert "failed / stopped early**: student server died" in text
    assert "No FLOPs recorded." in text and "No config.yaml" in text


def test_not_a_run_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        cli_main([str(tmp_path / "nope")])


def test_flops_to_reach_interpolates_between_evals():
    curve = [(0.0, 0.5), (10.0, 0.7), (20.0, 0.9)]
    assert flops_to_reach(curve, 0.8) == pytest.approx(15.0)
    assert flops_to_reach(curve, 0.5) == 0.0
    assert flops_to_reach(curve, 0.95) is None


def test_compare_table(tmp_path, capsys):
    # Teacher 0.9 -> target 0.855. SFT (baseline, 4e9 FLOPs/step) crosses between step 3
    # (0.80) and step 4 (0.91); OPD (2e9/step) between step 1 (0.70) and step 2 (0.86).
    sft = make_run(tmp_path, "sft", "sft", [0.5, 0.6, 0.7, 0.8, 0.91], teacher_flops_per_step=3e9,
                   student_flops_per_step=1e9)
    rl = make_run(tmp_path, "rl", "rl", [0.5, 0.55, 0.6], student_flops_per_step=1e9)
    opd = make_run(tmp_path, "opd", "opd", [0.5, 0.7, 0.86], teacher_flops_per_step=1e9,
                   student_flops_per_step=1e9)
    out = tmp_path / "table.md"
    assert cli_main(["--compare", str(sft), str(rl), str(opd), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in printed.splitlines() if line.startswith("| ") and "---" not in line}
    target_sft = 4e9 * (3 + (0.855 - 0.8) / 0.11)  # interpolated cumulative FLOPs = 1.4e10
    target_opd = 2e9 * (1 + (0.855 - 0.7) / 0.16)
    assert rows["sft"][7] == f"{target_sft:.3e}" and rows["sft"][8] == "1.00x"
    assert rows["opd"][7] == f"{target_opd:.3e}"
    assert rows["opd"][8] == f"{target_sft / target_opd:.2f}x"
    assert rows["opd"][6] == f"{16e9 / 4e9:.2f}x"  # total FLOPs ratio vs the first run
    assert rows["rl"][7].startswith("not reached (best 60.0% at 2.000e+09)") and rows["rl"][8] == "-"
    assert rows["opd"][3] == "2.000e+09" and rows["opd"][4] == "2.000e+09"
    # Common level = 60% (RL's best): SFT reaches it at step 1 (4e9), OPD between 0.5 and 0.7
    # (at half of step 1: 1e9), RL at step 2 (2e9).
    assert "FLOPs to common 60.0%" in printed
    assert rows["sft"][9] == "4.000e+09" and rows["opd"][9] == "1.000e+09" and rows["rl"][9] == "2.000e+09"
    assert rows["opd"][10] == "4.00x" and rows["rl"][10] == "2.00x"
    assert out.read_text().strip() == printed.strip()


def test_schema_documents_what_the_loop_writes():
    for key in ("step", "accuracy", "reverse_kl", "reverse_kl_sampled", "flops", "stage_seconds",
                "teacher_accuracy", "final"):
        assert key in METRIC_KEYS
