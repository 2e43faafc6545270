#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost for CI (Debian 12, SLURM 22.05, run as root, no
# systemd): munge, MariaDB + slurmdbd (accounting, so `sacct` answers as on a production cluster
# and the Snakemake executor plugin runs with its defaults), slurmctld and slurmd.
# The node advertises 2 placeholder GPUs and 2 placeholder NPUs (character devices made with
# mknod), so GRES requests are scheduled and jobs get CUDA_VISIBLE_DEVICES like on real hardware.
# Idempotent: a second call only restarts what is not running. `.ci/slurm-up.sh down` stops it.
set -euo pipefail

CLUSTER=sfdci
CONF=/etc/slurm
LOGS=/var/log/slurm

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "${1:-}" = down ]; then
    for f in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
        if pid_alive "$f"; then kill "$(cat "$f")"; fi
    done
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
mkdir -p "$CONF" "$LOGS" /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld
for i in 0 1; do
    [ -e /dev/ci-gpu$i ] || mknod /dev/ci-gpu$i c 195 $i
    [ -e /dev/ci-npu$i ] || mknod /dev/ci-npu$i c 1 3
done

cat > "$CONF/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=600
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/npu
JobAcctGatherType=jobacct_gather/linux
GresTypes=gpu,npu
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2,npu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
PartitionName=npu Nodes=ALL MaxTime=INFINITE State=UP
EOF
cat > "$CONF/gres.conf" <<EOF
NodeName=$host Name=gpu File=/dev/ci-gpu[0-1]
NodeName=$host Name=npu File=/dev/ci-npu[0-1]
EOF
cat > "$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
EOF
chmod 600 "$CONF/slurmdbd.conf"
rm -f "$CONF/cgroup.conf"  # 22.05 has no "disabled" cgroup plugin; no file = no cgroups

chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
pid_alive /run/munge/munged.pid || runuser -u munge -- munged

chown mysql:mysql /run/mysqld
if ! pid_alive /run/mysqld/mysqld.pid; then
    runuser -u mysql -- mariadbd --pid-file=/run/mysqld/mysqld.pid >"$LOGS/mariadb.log" 2>&1 &
    for _ in $(seq 60); do mariadb -e "select 1" >/dev/null 2>&1 && break; sleep 0.5; done
fi
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

if ! pid_alive /run/slurmdbd.pid; then
    slurmdbd
    for _ in $(seq 60); do timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.5; done
fi
timeout 10 sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
pid_alive /run/slurmctld.pid || slurmctld
pid_alive /run/slurmd.pid || slurmd

for _ in $(seq 60); do
    state=$(timeout 5 sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 1
done
case "$state" in
    idle*|mix*|alloc*) echo "slurm up: node $host $state, $cpus CPUs, ${mem_mb} MB, gres gpu:2,npu:2" ;;
    *) echo "slurm did not come up (node state '$state'); logs in $LOGS" >&2; tail -n 20 "$LOGS"/*.log >&2; exit 1 ;;
esac
