#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages, to try `grid --executor slurm` and
# to test it (tests/test_slurm.py). Everything it makes lives under STATE: its own munge key and socket,
# slurm.conf with this machine's cores and memory, one partition, ports of its own (6917 and 6918, or
# SLURM_LOCAL_PORT and the next), logs and spool. It never reads or writes /etc/slurm or /etc/munge, so a
# real cluster on the machine is untouched.
#
#   sudo apt-get install slurmctld slurmd slurm-client munge
#   scripts/slurm-local.sh [STATE]          # start (again: a no-op); default STATE /tmp/reproduce-slurm
#   export SLURM_CONF=STATE/slurm.conf      # what sbatch, squeue, scancel and submitit then use
#   scripts/slurm-local.sh --stop [STATE]   # stop the daemons this script started there
#
# No cgroups (Debian's Slurm 22.05 refuses CgroupPlugin=disabled, so there is no cgroup.conf):
# processes are tracked by /proc (proctrack/linuxproc) and tasks are not bound (task/none). No accounting
# database: `sacct` has nothing to say (submitit warns and reads squeue instead).
set -euo pipefail
stop=0
if [ "${1:-}" = --stop ]; then stop=1; shift; fi
STATE=${1:-/tmp/reproduce-slurm}
CONF=$STATE/slurm.conf

running() {  # the daemon whose pid file is $1 is alive
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

if [ $stop = 1 ]; then
  if [ ! -f "$CONF" ]; then echo "slurm-local: no cluster of this script in $STATE; nothing stopped"; exit 0; fi
  for daemon in slurmd slurmctld munged; do
    if running "$STATE/$daemon.pid"; then kill "$(cat "$STATE/$daemon.pid")"; fi
  done
  for _ in $(seq 50); do
    running "$STATE/slurmd.pid" || running "$STATE/slurmctld.pid" || running "$STATE/munged.pid" || break
    sleep 0.2
  done
  echo "slurm-local: stopped the cluster in $STATE"
  exit 0
fi

missing=()
[ "$(id -u)" = 0 ] || missing+=("root (its daemons run as root): run it with sudo")
for cmd in slurmctld slurmd sbatch munged; do
  command -v "$cmd" >/dev/null || missing+=("$cmd: sudo apt-get install slurmctld slurmd slurm-client munge")
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'slurm-local: missing %s\n' "${missing[@]}" | sort -u >&2
  exit 2
fi

if running "$STATE/slurmctld.pid" && running "$STATE/slurmd.pid" && running "$STATE/munged.pid"; then
  echo "slurm-local: already running in $STATE (export SLURM_CONF=$CONF)"
  exit 0
fi

PORT=${SLURM_LOCAL_PORT:-6917}  # the controller's; the node's is the next one
for port in $PORT $((PORT + 1)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "slurm-local: port $port is taken (another cluster of this script? stop it with --stop ITS_STATE, or set" \
         "SLURM_LOCAL_PORT to a free port)" >&2
    exit 1
  fi
done

mkdir -p "$STATE"/{munge,ctld,spool}
chmod 700 "$STATE/munge"
[ -f "$STATE/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" 2>/dev/null
                                     chmod 400 "$STATE/munge/munge.key"; }
node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MB, less 1 GB for the system
cat > "$CONF" <<EOF
# written by scripts/slurm-local.sh: a single-node cluster for tests; state in $STATE
ClusterName=reproduce-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
KillWait=2
InactiveLimit=0
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

running "$STATE/munged.pid" || munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
  --pid-file="$STATE/munged.pid" --log-file="$STATE/munged.log" --seed-file="$STATE/munge/munge.seed"
export SLURM_CONF=$CONF
running "$STATE/slurmctld.pid" || slurmctld -f "$CONF"
running "$STATE/slurmd.pid" || slurmd -f "$CONF"
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  case $state in idle|mix|alloc) echo "slurm-local: running in $STATE, node $node ($cpus CPUs, $memory MB); export SLURM_CONF=$CONF"
                                exit 0 ;;
                 down*|drain*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm-local: the node did not come up within 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
"$0" --stop "$STATE" >/dev/null
exit 1
