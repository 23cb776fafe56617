"""Placement (opd_megatron/plan/placement.py): plans that fit, plans that do not (the error names
the key), the exports the sbatch script evals. Pure python, milliseconds.

    .venv/bin/pytest -q tests/test_slurm_placement.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from opd_megatron.config import load_config
from opd_megatron.errors import ConfigError
from opd_megatron.models.qwen3_shapes import QWEN3_SHAPES
from opd_megatron.plan.placement import format_plan, load_profile, num_params, plan, shell_exports

REPO = Path(__file__).resolve().parents[1]
QWEN3_8B = str(REPO / "recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml")
QWEN3_32B = str(REPO / "recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml")
TINY = str(REPO / "recipes/opd-tiny-cpu.yaml")


def nodes(n: int) -> list[str]:
    return [f"gpu{i:03d}" for i in range(n)]


def test_param_counts_match_the_model_cards():
    assert num_params(QWEN3_SHAPES["qwen3-8b"]) == pytest.approx(8.19e9, rel=0.01)
    assert num_params(QWEN3_SHAPES["qwen3-32b"]) == pytest.approx(32.8e9, rel=0.01)
    assert num_params(QWEN3_SHAPES["qwen3-0.6b"]) == pytest.approx(0.596e9, rel=0.01)  # tied embeddings


def test_qwen3_8b_three_nodes_one_per_role():
    p = plan(load_config(QWEN3_8B), nodes(3))
    assert {s.node for s in p.teacher} == {"gpu000"} and {s.node for s in p.student} == {"gpu001"}
    assert p.learner_nodes == ("gpu002",) and p.master_addr == "gpu002"
    assert p.learner_procs_per_node == 8 and p.learner_gpus == tuple(range(8))
    assert sorted(g for s in p.teacher for g in s.gpus) == list(range(8))  # 8 x tp1 fill the node
    assert p.router is None  # the learner spreads its requests over the 8 servers itself
    with pytest.raises(ConfigError, match=r"^engines\.router: .* checks no API key"):
        plan(load_config(QWEN3_8B, ["engines.router=true"]), nodes(3))  # it would listen on 0.0.0.0 unkeyed
    ports = [s.port for s in p.teacher + p.student] + [p.master_port]
    assert len(set(ports)) == len(ports)  # fake nodes may share one host
    text = format_plan(p)
    assert "learner: 1 node(s) (gpu002) x 8 process(es), MASTER_ADDR=gpu002" in text
    assert "memory: teacher server tp1: weights 15.3 GiB" in text


def test_qwen3_32b_teacher_tp2_and_two_learner_nodes():
    p = plan(load_config(QWEN3_32B), nodes(4))
    assert [s.gpus for s in p.teacher] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert p.learner_nodes == ("gpu002", "gpu003") and p.learner_procs_per_node == 8
    env = dict(line.split("=", 1) for line in shell_exports(p).splitlines() if not line.startswith("export"))
    assert shlex.split(env["OPD_LEARNER_NODES"]) == ["gpu002,gpu003"]
    assert shlex.split(env["OPD_TEACHER_GPUS"])[0].split() == ["0,1", "2,3", "4,5", "6,7"]


@pytest.mark.parametrize("overrides, num_nodes, key", [
    (["engines.teacher.tp=16"], 3, "engines.teacher.tp"),
    (["engines.teacher.num_servers=9"], 3, "engines.teacher.num_servers"),
    (["parallel.dp=8"], 3, "parallel:"),
    ([], 4, "cluster.num_nodes"),
    (["cluster.profile=local-cpu"], 3, "cluster.gpus_per_node"),
    (["cluster.profile=no-such-cluster"], 3, "cluster.profile"),
    (["teacher.flops_name=qwen3-32b", "engines.teacher.dtype=float32"], 3, "engines.teacher.tp"),
    (["parallel.tp=1", "parallel.dp=8", "parallel.distributed_optimizer=false", "student.flops_name=qwen3-32b",
      "student.path=/nonexistent"], 3, "parallel.tp"),
    (["engines.weight_sync=tensor"], 3, "engines.weight_sync"),
])
def test_plans_that_do_not_fit_name_the_key(overrides, num_nodes, key):
    with pytest.raises(ConfigError) as err:
        plan(load_config(QWEN3_8B, overrides), nodes(num_nodes))
    assert str(err.value).startswith(key), str(err.value)
    assert "\n" not in str(err.value)


def test_memory_estimate_rejects_32b_teacher_at_tp1_on_80gb_but_fits_tp2():
    over = ["teacher.flops_name=qwen3-32b", "cluster.profile=h100-8g"]
    with pytest.raises(ConfigError, match="^engines.teacher.tp: teacher weights need ~61"):
        plan(load_config(QWEN3_8B, over + ["engines.teacher.mem_fraction=0.7"]), nodes(3))
    with pytest.raises(ConfigError, match="^engines.teacher.tp: at tp 1 the teacher's KV cache has room for ~1"):
        plan(load_config(QWEN3_8B, over), nodes(3))  # 3 GiB left: fewer tokens than one 32K response
    p = plan(load_config(QWEN3_8B, over + ["engines.teacher.tp=2", "engines.teacher.num_servers=4"]), nodes(3))
    assert "teacher server tp2: weights 30.5 GiB" in format_plan(p)


def test_servers_sharing_the_learner_node_take_its_gpus():
    over = ["cluster.num_nodes=2", "cluster.student_nodes=0", "engines.student.num_servers=2",
            "parallel.dp=3", "engines.weight_sync=disk"]
    p = plan(load_config(QWEN3_8B, over), nodes(2))
    assert [s.gpus for s in p.student] == [(0,), (1,)]
    assert p.learner_gpus == (2, 3, 4, 5, 6, 7) and p.learner_procs_per_node == 6


def test_tiny_cpu_teacher_node_then_student_and_learner_node():
    cfg = load_config(TINY, ["cluster.num_nodes=2", "cluster.teacher_nodes=1"])
    p = plan(cfg, ["n1", "n2"])
    assert [s.url for s in p.teacher] == [f"http://n1:{cfg.engines.base_port + 2}"]
    assert [s.url for s in p.student] == [f"http://n2:{cfg.engines.base_port}"]
    assert p.learner_nodes == ("n2",) and p.learner_procs_per_node == 1 and p.learner_gpus == ()
    assert p.memory == ()  # CPU profile: no GPU memory check


def test_cpu_learner_processes_split_over_nodes():
    cfg = load_config(TINY, ["cluster.num_nodes=2", "cluster.learner_nodes=2", "parallel.dp=3"])
    with pytest.raises(ConfigError, match="^parallel: tp\\*pp\\*dp = 3 is not divisible"):
        plan(cfg, ["n1", "n2"])
    cfg = load_config(TINY, ["cluster.num_nodes=2", "cluster.learner_nodes=2", "parallel.dp=4"])
    assert plan(cfg, ["n1", "n2"]).learner_procs_per_node == 2


def test_no_teacher_servers_when_the_teacher_lives_in_the_learner():
    cfg = load_config(TINY, ["objective.teacher_backend=megatron"])
    p = plan(cfg, ["n1"])
    assert p.teacher == () and "teacher: inside the learner" in format_plan(p)


def test_shell_exports_evaluate_in_bash():
    cfg = load_config(TINY, ["cluster.num_nodes=2", "cluster.teacher_nodes=1"])
    script = shell_exports(plan(cfg, ["n1", "n2"])) + 'echo "$OPD_TEACHER_URLS|$OPD_MASTER_ADDR|$SGLANG_USE_CPU_ENGINE"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"http://n1:{cfg.engines.base_port + 2}|n2|1"


def test_every_profile_loads():
    for path in sorted((REPO / "configs/clusters").glob("*.yaml")):
        profile = load_profile(path.stem)
        assert profile.gpus_per_node == 0 or profile.gpu_memory_gib > 0, path


def test_validate_prints_the_placement():
    from opd_megatron.plan.describe import describe_plan

    text = describe_plan(load_config(QWEN3_8B), {"student": None, "teacher": None}, num_nodes=3)
    assert "placement on 3 node(s)" in text and "MASTER_ADDR=node2" in text


def test_job_helper_builds_the_server_command_the_sbatch_script_runs(tmp_path):
    """slurm/job.py serve --dry-run: the engines launcher's command, on the planned port and bind host."""
    from opd_megatron.models.tiny import TEACHER_SHAPE, save_random_model

    save_random_model(tmp_path / "teacher", TEACHER_SHAPE, seed=1)
    cmd = [sys.executable, "slurm/job.py", "serve", "teacher", "0", "--nodes", "n1 n2", "--dry-run", TINY,
           "cluster.num_nodes=2", "cluster.teacher_nodes=1", f"teacher.path={tmp_path / 'teacher'}",
           "engines.base_port=35000"]
    env = {k: v for k, v in os.environ.items() if k != "OPD_API_KEY_FILE"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(env, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "with no API key" in proc.stderr, proc.stderr  # 0.0.0.0 and no key: refused
    key_file = tmp_path / "api-key"
    key_file.write_text("k" * 43 + "\n")
    key_file.chmod(0o600)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=str(REPO), OPD_API_KEY_FILE=str(key_file)))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("[job] teacher server 0 on n1: $ ") and "k" * 43 not in proc.stdout + proc.stderr
    argv = shlex.split(line.split("$ ", 1)[1])
    assert argv[argv.index("--port") + 1] == "35002" and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--model-path") + 1] == str(tmp_path / "teacher")
    assert argv[1:4] == ["-m", "opd_megatron.engines.apikey", "sglang.launch_server"] and "--api-key" not in argv


def test_job_helper_exports_fail_with_exit_2_naming_the_key():
    cmd = [sys.executable, "slurm/job.py", "exports", "--nodes", "n1 n2 n3", TINY]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and proc.stderr.startswith("opd: error: cluster.num_nodes:"), proc.stderr
