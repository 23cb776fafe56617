#!/usr/bin/env bash
# learner.sh: the learner on one node of a Slurm job, and the way to signal it.
#   srun --nodes=L --ntasks-per-node=1 slurm/learner.sh run RECIPE key=value ...
#       `opd run RECIPE ...` (torchrun of it when the plan gives the learner >1 process)
#   srun --nodes=L --ntasks-per-node=1 slurm/learner.sh signal USR1
#       deliver USR1 to the `opd run` process(es) on this node only
# slurm/opd.sbatch runs both; the plan comes in OPD_* variables (slurm/job.py exports).
#
# Why a separate `signal`: a signal sent to a job step (srun forwarding, scancel -s) reaches
# every process of the step, and the learner's helper processes (torch's shared-memory
# manager, torchrun itself) die of USR1, which breaks the checkpoint it asks for. So the
# learner's PID is recorded per node and only `opd run` (or torchrun's workers) get USR1.
set -euo pipefail

: "${OPD_LEARNER_PID_DIR:?set by slurm/opd.sbatch}" "${SLURMD_NODENAME:?run under srun}"
pid_file="$OPD_LEARNER_PID_DIR/learner-$SLURMD_NODENAME.pid"

if [[ "${1:-}" == signal ]]; then
  sig="${2:?usage: learner.sh signal SIG}"
  [[ -s "$pid_file" ]] || exit 0 # learner not started (or done) on this node
  read -r pid mode <"$pid_file"
  if [[ "$mode" == torchrun ]]; then
    pkill "-$sig" -P "$pid" || true # torchrun's workers, by parent PID
  else
    kill "-$sig" "$pid" 2>/dev/null || true
  fi
  exit 0
fi

[[ "${1:-}" == run ]] || { echo "usage: learner.sh run RECIPE [key=value ...] | signal SIG" >&2; exit 2; }
: "${OPD_PYTHON:?}" "${OPD_LEARNER_NUM_NODES:?}" "${OPD_LEARNER_PROCS_PER_NODE:?}"
if [[ -n "${OPD_LEARNER_GPUS:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="$OPD_LEARNER_GPUS"
fi
world=$((OPD_LEARNER_NUM_NODES * OPD_LEARNER_PROCS_PER_NODE))
echo "[learner.sh] node $SLURMD_NODENAME: $world process(es) in all, $OPD_LEARNER_PROCS_PER_NODE here"
# Ignored here and inherited: a step-wide USR1 kills nothing; `opd run` installs its own handler.
trap '' USR1
if ((world == 1)); then
  echo "$$ single" >"$pid_file" # exec keeps this PID
  exec "$OPD_PYTHON" -m opd_megatron "$@"
fi
# Node rank = position of this node in the learner's node list (SLURM_NODEID counts the whole job).
node_rank=0
IFS=, read -r -a learner_nodes <<<"$OPD_LEARNER_NODES"
for i in "${!learner_nodes[@]}"; do
  if [[ "${learner_nodes[$i]}" == "$SLURMD_NODENAME" ]]; then node_rank=$i; fi
done
echo "$$ torchrun" >"$pid_file"
exec "$OPD_PYTHON" -m torch.distributed.run --nnodes="$OPD_LEARNER_NUM_NODES" \
  --nproc-per-node="$OPD_LEARNER_PROCS_PER_NODE" --node-rank="$node_rank" \
  --master-addr="$OPD_MASTER_ADDR" --master-port="$OPD_MASTER_PORT" -m opd_megatron "$@"
