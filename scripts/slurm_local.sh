#!/usr/bin/env bash
# A single-node Slurm on this host, run as root (Debian's slurm-wlm 22.05 + munge), for the HPC
# path of dft/hpc.py and its tests.
#   bash scripts/slurm_local.sh start    # write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd; wait until idle
#   bash scripts/slurm_local.sh stop     # stop the three daemons by their pid files
#   bash scripts/slurm_local.sh status   # daemons and sinfo
# Idempotent: `start` with everything running only re-checks the node.
set -euo pipefail

CONF_DIR=/etc/slurm                  # where Debian's slurm reads slurm.conf
CONF=$CONF_DIR/slurm.conf
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

HOST=$(hostname)

alive() {  # alive PIDFILE: the process named in PIDFILE exists
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  # leave ~10 % of the memory to the system
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$CONF_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL" "$LOG_DIR" "$RUN_DIR"
  local tmp
  tmp=$(mktemp "$CONF_DIR/slurm.conf.XXXXXX")
  cat >"$tmp" <<EOF
# written by scripts/slurm_local.sh: single-node Slurm on $HOST, run as root
ClusterName=wycryst
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=5
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 644 "$tmp"
  mv -f "$tmp" "$CONF"
}

start_munge() {
  if alive "$MUNGE_PID"; then return; fi
  if [ ! -s "$MUNGE_KEY" ]; then
    mkdir -p "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$MUNGE_KEY" --force
    else dd if=/dev/urandom bs=1 count=1024 of="$MUNGE_KEY" status=none; fi
  fi
  getent passwd munge >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin munge
  chown munge:munge "$MUNGE_KEY" "$(dirname "$MUNGE_KEY")"
  chmod 600 "$MUNGE_KEY"
  chmod 700 "$(dirname "$MUNGE_KEY")"
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
}

node_state() {
  sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1 | tr -d '*~#$@+' || true
}

wait_idle() {
  local deadline=$((SECONDS + WAIT_S)) state resumed=0
  while [ $SECONDS -lt $deadline ]; do
    state=$(node_state)
    case "$state" in
      idle|mixed|allocated|completing) echo "slurm: node $HOST is $state"; return 0 ;;
      down|drained|draining|fail|failing)
        if [ $resumed -eq 0 ]; then
          scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
          resumed=1
        fi ;;
    esac
    sleep 1
  done
  echo "slurm: node $HOST did not become idle within ${WAIT_S}s (state '${state:-none}')" >&2
  echo "--- $LOG_DIR/slurmctld.log" >&2; tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
  echo "--- $LOG_DIR/slurmd.log" >&2; tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
  return 1
}

start() {
  if ! alive "$CTLD_PID" || ! alive "$SLURMD_PID"; then
    write_conf
  fi
  start_munge
  alive "$CTLD_PID" || /usr/sbin/slurmctld
  alive "$SLURMD_PID" || /usr/sbin/slurmd
  wait_idle
}

stop_one() {  # stop_one NAME PIDFILE
  local pid
  if alive "$2"; then
    pid=$(cat "$2")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    echo "stopped $1 ($pid)"
  fi
  rm -f "$2"
}

stop() {
  stop_one slurmd "$SLURMD_PID"
  stop_one slurmctld "$CTLD_PID"
  stop_one munged "$MUNGE_PID"
}

status() {
  local rc=0 name pidfile
  for name in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
    pidfile=${name#*:}
    if alive "$pidfile"; then echo "${name%%:*}: running ($(cat "$pidfile"))"
    else echo "${name%%:*}: stopped"; rc=1; fi
  done
  [ $rc -eq 0 ] && sinfo
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
