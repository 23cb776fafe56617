#!/usr/bin/env bash
# local_slurm.sh: a real multi-node Slurm cluster on this one machine (slurmctld, one slurmd
# per node named n1, n2, ..., and munged), so the sbatch path runs for real without an HPC cluster.
#
#   launch/local_slurm.sh up [N]   # install packages if missing, start N nodes (default 2, or the
#                                  # running cluster's count), wait until all are idle; a running
#                                  # cluster with another count is stopped and started with N
#   eval "$(launch/local_slurm.sh env)"   # point sbatch/srun/sinfo at it (sets SLURM_CONF)
#   launch/local_slurm.sh status   # daemons and sinfo
#   launch/local_slurm.sh down     # cancel its jobs, stop the daemons by their PID files
#   launch/local_slurm.sh deps     # only install the Debian packages (slurm, munge, shellcheck)
#
# Trying the Slurm path on a laptop (Debian/Ubuntu, as root or with sudo):
#   sudo launch/local_slurm.sh up && eval "$(launch/local_slurm.sh env)"
#   RECIPE=recipes/opd-tiny-cpu.yaml sbatch --wait --nodes=2 --gpus-per-node=0 slurm/opd_qwen3.sh \
#     cluster.num_nodes=2 cluster.teacher_nodes=1     # teacher server on n1; student + learner on n2
#   sudo launch/local_slurm.sh down
#
# Everything it writes lives under $OPD_SLURM_DIR (default /tmp/opd-slurm): slurm.conf, state,
# spool, logs, PID files and its own munge socket, so it never touches a system munged or
# slurmctld. The one change outside it is a tagged line "127.0.0.1 n1 n2 ..." in /etc/hosts so the
# node names resolve like real hostnames (removed by `down`). Ports: slurmctld
# $OPD_SLURM_PORT (default 16817), slurmd the N ports after it. `up` is idempotent; `down` only kills
# PIDs named in its own PID files.
set -euo pipefail

SLURM_DIR="${OPD_SLURM_DIR:-/tmp/opd-slurm}"
CTLD_PORT="${OPD_SLURM_PORT:-16817}"
NODES_FILE="$SLURM_DIR/nodes" # the running cluster's node count (written by `up`)
MAX_NODES=8
NODE_CPUS="${OPD_SLURM_NODE_CPUS:-2}"
NODE_MEMORY_MB="${OPD_SLURM_NODE_MEMORY_MB:-8000}"
# set_nodes N: the node names n1..nN and the /etc/hosts line naming them.
set_nodes() {
  local i
  NODE_NAMES=()
  for ((i = 1; i <= $1; i++)); do NODE_NAMES+=("n$i"); done
  HOSTS_LINE="127.0.0.1 ${NODE_NAMES[*]} # opd-local-slurm $SLURM_DIR"
}
RUNNING_NODES="$(cat "$NODES_FILE" 2>/dev/null || echo 2)"
set_nodes "$RUNNING_NODES"
MUNGE_DIR="$SLURM_DIR/munge"
CONF="$SLURM_DIR/slurm.conf"
PACKAGES=(slurmctld slurmd slurm-client munge shellcheck)

log() { echo "local_slurm: $*" >&2; }

install_deps() {
  local missing=()
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_conf() {
  local host
  host="$(hostname -s)"
  local first_port=$((CTLD_PORT + 1))
  local last_port=$((CTLD_PORT + ${#NODE_NAMES[@]}))
  # proctrack/linuxproc + task/none: no cgroups needed (containers, laptops).
  # kill_invalid_depend: `sbatch --wait` never hangs on a job whose dependency can never run.
  # cred_expire=15: a requeued job may start again after 15 s instead of the default 120 s;
  # sched_interval/bf_interval=2: the scheduler looks for it every 2 s, not every 60/30 s.
  cat >"$CONF" <<EOF
ClusterName=opd-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket,cred_expire=15
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool/%n
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=kill_invalid_depend,sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$(IFS=,; echo "${NODE_NAMES[*]}") NodeHostname=$host NodeAddr=127.0.0.1 Port=$first_port-$last_port CPUs=$NODE_CPUS RealMemory=$NODE_MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# pid_alive FILE: the PID in FILE names a running process.
pid_alive() {
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {
  local what="$1" timeout_s="$2"
  shift 2
  local start_s=$SECONDS
  until "$@"; do
    if ((SECONDS - start_s > timeout_s)); then
      log "timed out after ${timeout_s}s waiting for $what (logs: $SLURM_DIR/log)"
      return 1
    fi
    sleep 0.5
  done
}

start_munge() {
  if pid_alive "$MUNGE_DIR/munged.pid"; then
    return 0
  fi
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 0755 "$MUNGE_DIR"
  if [[ ! -s /etc/munge/munge.key ]]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  runuser -u munge -- munged --socket="$MUNGE_DIR/munge.socket" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed"
  wait_for munged 20 test -S "$MUNGE_DIR/munge.socket"
}

add_hosts_line() {
  grep -qxF "$HOSTS_LINE" /etc/hosts 2>/dev/null && return 0
  echo "$HOSTS_LINE" >>/etc/hosts
}

remove_hosts_line() {
  grep -qxF "$HOSTS_LINE" /etc/hosts 2>/dev/null || return 0
  # /etc/hosts may be a bind mount: rewrite it in place instead of replacing the file.
  local kept
  kept="$(grep -vxF "$HOSTS_LINE" /etc/hosts)"
  printf '%s\n' "$kept" >/etc/hosts
}

nodes_idle() {
  local states
  states="$(SLURM_CONF="$CONF" sinfo -h -N -o '%N %t' 2>/dev/null)" || return 1
  local node
  for node in "${NODE_NAMES[@]}"; do
    grep -Eq "^$node (idle|mix|alloc)$" <<<"$states" || return 1
  done
}

cmd_up() {
  local want="${1:-$RUNNING_NODES}"
  if ! [[ "$want" =~ ^[0-9]+$ ]] || ((want < 1 || want > MAX_NODES)); then
    log "up: the node count must be 1-$MAX_NODES, got '$want' (launch/local_slurm.sh up 3)"
    exit 2
  fi
  if ((want != RUNNING_NODES)) && pid_alive "$SLURM_DIR/run/slurmctld.pid"; then
    log "up: the running cluster has $RUNNING_NODES node(s); restarting it with $want"
    cmd_down
  fi
  set_nodes "$want"
  install_deps
  mkdir -p "$SLURM_DIR"/{state,spool,run,log}
  for node in "${NODE_NAMES[@]}"; do mkdir -p "$SLURM_DIR/spool/$node"; done
  write_conf
  echo "${#NODE_NAMES[@]}" >"$NODES_FILE"
  add_hosts_line
  start_munge
  if ! pid_alive "$SLURM_DIR/run/slurmctld.pid"; then
    slurmctld -f "$CONF"
  fi
  for node in "${NODE_NAMES[@]}"; do
    if ! pid_alive "$SLURM_DIR/run/slurmd-$node.pid"; then
      slurmd -f "$CONF" -N "$node"
    fi
  done
  wait_for "nodes ${NODE_NAMES[*]} idle" 60 nodes_idle
  log "up: $(SLURM_CONF="$CONF" sinfo -h -N -o '%N:%t' | tr '\n' ' ')(SLURM_CONF=$CONF)"
}

stop_pidfile() {
  local file="$1" name="$2"
  pid_alive "$file" || return 0
  local pid
  pid="$(cat "$file")"
  kill "$pid" 2>/dev/null || true
  local tries
  for tries in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  log "$name (pid $pid) ignored SIGTERM for ${tries}x0.2s; sending SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
}

# Jobs first: their slurmstepd (and the servers it runs) would outlive slurmd.
cancel_jobs() {
  pid_alive "$SLURM_DIR/run/slurmctld.pid" || return 0
  local jobs
  jobs="$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null || true)"
  [[ -n "$jobs" ]] || return 0
  log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
  # shellcheck disable=SC2086  # one job id per word
  SLURM_CONF="$CONF" scancel $jobs || true
  wait_for "jobs to end" 60 no_jobs || true
}

no_jobs() {
  [[ -z "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ]]
}

cmd_down() {
  cancel_jobs
  for node in "${NODE_NAMES[@]}"; do
    stop_pidfile "$SLURM_DIR/run/slurmd-$node.pid" "slurmd $node"
  done
  stop_pidfile "$SLURM_DIR/run/slurmctld.pid" slurmctld
  stop_pidfile "$MUNGE_DIR/munged.pid" munged
  remove_hosts_line
  # Drop job state so the next `up` starts clean (no jobs resurrected from an old run).
  rm -rf "${SLURM_DIR:?}/state" "${SLURM_DIR:?}/spool"
  rm -f "$NODES_FILE"
  log "down"
}

cmd_status() {
  local file
  for file in "$MUNGE_DIR/munged.pid" "$SLURM_DIR"/run/*.pid; do
    [[ -e "$file" ]] || continue
    if pid_alive "$file"; then echo "running $(basename "$file" .pid) pid $(cat "$file")"; else echo "stopped $(basename "$file" .pid)"; fi
  done
  if pid_alive "$SLURM_DIR/run/slurmctld.pid"; then
    SLURM_CONF="$CONF" sinfo -N
  else
    echo "slurmctld not running (SLURM_DIR=$SLURM_DIR)"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up "${2:-}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  deps) install_deps ;;
  *)
    echo "usage: $0 up [N]|down|status|env|deps (OPD_SLURM_DIR=$SLURM_DIR)" >&2
    exit 2
    ;;
esac
