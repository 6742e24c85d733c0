#!/usr/bin/env bash
# Start a throwaway one-node SLURM (munged, slurmctld, slurmd on this machine) for the tests marked
# `slurm`; `bash .ci/slurm.sh stop` stops it. Installs Debian's slurmctld, slurmd, slurm-client and
# munge when missing. The node has this machine's CPUs and memory and two stand-in GPUs (plain
# files in gres.conf); timeouts are short so that requeued and finished jobs clear quickly.
# Idempotent: a second start stops the first daemons and starts them again on a fresh state.
set -euo pipefail
state=/tmp/xvol-ci-slurm
conf=/etc/slurm

stop() {
  local daemon pid
  for daemon in slurmd slurmctld munged; do
    pid=$(cat "$state/$daemon.pid" 2>/dev/null || true)
    rm -f "$state/$daemon.pid"
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}

if [ "${1:-}" = stop ]; then
  stop
  echo "slurm: stopped"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
stop
rm -rf "$state" && mkdir -p "$state/ctld" "$state/d" "$state/run" "$conf"

# munge: a key readable by the munge user only, its socket folder, the daemon as the munge user
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --force
for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
cp /run/munge/munged.pid "$state/munged.pid"

node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
touch "$state/gpu0" "$state/gpu1"
cat >"$conf/slurm.conf" <<EOF
# One-node SLURM for the tests marked slurm (written by .ci/slurm.sh)
ClusterName=xvol-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=2
KillWait=10
MessageTimeout=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
SchedulerType=sched/builtin
SchedulerParameters=defer_batch=0,sched_interval=1,sched_min_interval=100000
GresTypes=gpu
NodeName=$node CPUs=$cpus RealMemory=$memory Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
cat >"$conf/gres.conf" <<EOF
AutoDetect=off
NodeName=$node Name=gpu File=$state/gpu[0-1]
EOF

/usr/sbin/slurmctld -i
/usr/sbin/slurmd
for daemon in slurmctld slurmd; do  # their pids, for `stop` (the daemons delete their own files)
  for _ in $(seq 50); do [ -s "$state/run/$daemon.pid" ] && break; sleep 0.1; done
  cp "$state/run/$daemon.pid" "$state/$daemon.pid"
done
for _ in $(seq 150); do
  if sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
    echo "slurm: ready (node $node, $cpus CPUs, 2 stand-in GPUs)"
    exit 0
  fi
  sleep 0.2
done
echo "slurm: the node did not become idle; see $state/slurmctld.log and $state/slurmd.log" >&2
exit 1
