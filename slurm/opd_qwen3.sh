#!/usr/bin/env bash
# opd_qwen3.sh: the Qwen3 reproduction shape (TML "On-Policy Distillation": teacher Qwen3-8B,
# student Qwen3-8B-Base after SFT) on three 8-GPU nodes: teacher servers, student servers +
# router, learner. Thin wrapper over slurm/opd.sbatch; arguments are key=value overrides.
#
#   sbatch slurm/opd_qwen3.sh [key=value ...]
#   RECIPE=recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml sbatch --nodes=4 slurm/opd_qwen3.sh
#   # CPU, on launch/local_slurm.sh's two nodes (what CI runs):
#   RECIPE=recipes/opd-tiny-cpu.yaml sbatch --wait --nodes=2 --gpus-per-node=0 slurm/opd_qwen3.sh \
#     cluster.num_nodes=2 cluster.teacher_nodes=1
#
# sbatch options given on the command line override the #SBATCH lines below. Partition and
# account come from the cluster profile (configs/clusters/) via `sbatch -p/-A` or
# SBATCH_PARTITION / SBATCH_ACCOUNT. --signal's 120 s must match cluster.signal_s.
#
#SBATCH --job-name=opd-qwen3
#SBATCH --nodes=3
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output=opd-qwen3-%j.out
set -euo pipefail

export RECIPE="${RECIPE:-recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml}"
OPD_REPO="${OPD_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
export OPD_REPO
# exec keeps this shell's PID, so Slurm's USR1 (B:) reaches opd.sbatch's trap.
exec bash "$OPD_REPO/slurm/opd.sbatch" "$@"
