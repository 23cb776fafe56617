"""Submit a recipe to Slurm with NeMo-Run: the same job as `sbatch slurm/opd_qwen3.sh`, from Python.

    pip install -r requirements/nemo-run.txt      # nemo-run 0.11.1 (+ leptonai 0.27.3); own venv advised
    python launch/nemo_run_submit.py --recipe recipes/opd-tiny-cpu.yaml --nodes 2 --gpus-per-node 0 \
        --wait cluster.num_nodes=2 cluster.teacher_nodes=1
    python launch/nemo_run_submit.py --recipe recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml --nodes 3 \
        --partition batch --account myacct --time 24:00:00

Optional and thin: it only builds a ``SlurmExecutor`` and runs slurm/opd.sbatch through it;
placement, servers and the learner stay in that script. Arguments after the options are
key=value overrides, as for ``opd run``.

One difference from ``sbatch slurm/opd_qwen3.sh``: NeMo-Run writes its own batch script and
starts every command with srun, so opd.sbatch runs as a one-task step on the first node, and
the early-warning signal cannot reach it alone (``B:USR1`` would kill NeMo-Run's batch shell;
a step-wide USR1 kills the learner's helper processes). So no ``--signal`` is requested: the
job is requeueable and a run resumes from its latest periodic checkpoint when requeued or
resubmitted (checkpoint.interval).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True, help="recipe YAML, relative to the repo")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8, help="0 on CPU clusters")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default="", help="Slurm account ('' for none)")
    p.add_argument("--time", default="04:00:00")
    p.add_argument("--wait", action="store_true", help="block until the job ends; exit with its status")
    p.add_argument("overrides", nargs="*")
    return p


def make_executor(args: argparse.Namespace):
    import nemo_run as run
    from nemo_run.config import get_nemorun_home

    params = {"requeue": True}
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    return run.SlurmExecutor(
        account=args.account, partition=args.partition, nodes=args.nodes, ntasks_per_node=1,
        time=args.time, additional_parameters=params,
        # One copy of opd.sbatch, on the first node; its own sruns share the nodes (--overlap).
        srun_args=["--nodes=1", "--ntasks=1", "--overlap"],
        env_vars={"RECIPE": args.recipe, "OPD_REPO": str(REPO), "OPD_PYTHON": os.environ.get("OPD_PYTHON", "")},
        packager=run.Packager(),  # run the checkout in place (shared filesystem), no archive
        # Submit from this machine; NeMo-Run's experiment files ($NEMORUN_HOME) are the job dir.
        tunnel=run.LocalTunnel(job_dir=os.path.join(get_nemorun_home(), "experiments")))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import nemo_run as run
    except ImportError:
        print("nemo_run_submit: nemo-run is not installed; pip install -r requirements/nemo-run.txt", file=sys.stderr)
        return 2
    script = run.Script(path=str(REPO / "slurm" / "opd.sbatch"), args=list(args.overrides), entrypoint="bash")
    name = "opd-" + Path(args.recipe).stem
    with run.Experiment(name, executor=make_executor(args), log_level="WARN") as exp:
        exp.add(script, name=name)
        exp.run(detach=True)
        job_id = exp.jobs[0].handle.rsplit("/", 1)[-1]
    print(f"nemo_run_submit: submitted {name} as Slurm job {job_id}", flush=True)
    return wait_for_job(job_id) if args.wait else 0


def wait_for_job(job_id: str, poll_s: float = 5.0) -> int:
    """Poll scontrol until the job ends (NeMo-Run's own status needs sacct, i.e. slurmdbd);
    a requeued job passes through PENDING and is waited for. Returns the job's exit code."""
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
    while True:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        if fields.get("JobState") in final:
            print(f"nemo_run_submit: job {job_id} {fields['JobState']} exit {fields.get('ExitCode')}")
            return int(fields.get("ExitCode", "1:0").split(":")[0]) or int(fields["JobState"] != "COMPLETED")
        time.sleep(poll_s)


if __name__ == "__main__":
    sys.exit(main())
