#!/usr/bin/env bash
# A single-node Slurm on localhost, with accounting (slurmdbd + MariaDB) so that `sacct` works, for the
# `+launcher=slurm*` presets and the tests marked `slurm`. Debian/Ubuntu, as root, no systemd needed.
#
#   multirun_sweeps/local_slurm.sh start    # apt-install what is missing, configure, start, wait for the node
#   multirun_sweeps/local_slurm.sh stop     # stop, by its pid file, every daemon that start started
#   multirun_sweeps/local_slurm.sh status
#
# It writes /etc/slurm/slurm.conf and slurmdbd.conf only when they are absent or were written by this script,
# so it never takes over a real cluster's configuration; daemons already running (a MariaDB of the machine's)
# are used and left running by stop.
set -euo pipefail

MARK="# written by grpo-ctrl multirun_sweeps/local_slurm.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
# Stop order: the node, the controller, accounting, its database, authentication (start is the reverse).
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)
STARTED=/run/grpo-ctrl-local-slurm.started  # the daemons this script started, one a line

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

pid_file() {
  case $1 in
    mariadbd) echo /run/mysqld/mysqld.pid ;;
    munged) echo /run/munge/munged.pid ;;
    *) echo "/run/$1.pid" ;;
  esac
}

running() {  # running DAEMON: its pid file names a live process
  local file
  file=$(pid_file "$1")
  [[ -s $file ]] && kill -0 "$(cat "$file")" 2>/dev/null
}

launch() {  # launch DAEMON COMMAND...: start DAEMON with COMMAND unless it runs, and note that we did
  local daemon=$1
  shift
  running "$daemon" && return
  "$@"
  echo "$daemon" >>"$STARTED"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up within ${seconds} s (logs: /var/log/slurm/, /var/log/mysql/)"
}

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  ((${#missing[@]} == 0)) && return
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ours_or_absent() {
  [[ ! -e $1 ]] || grep -qxF "$MARK" "$1" || die "$1 exists and was not written by this script; not touching it"
}

configure() {
  ours_or_absent "$CONF"
  ours_or_absent "$DBD_CONF"
  local cpus mem_mb password
  cpus=$(nproc)
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))  # leave a tenth to the system
  mkdir -p /etc/slurm
  cat >"$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again once its old credential expired (default 120 s).
AuthInfo=cred_expire=10
MpiDefault=none
# cgroup plugins need systemd / cgroupfs, which containers and VMs of this kind lack.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$(pid_file slurmctld)
SlurmdPidFile=$(pid_file slurmd)
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -e $DBD_CONF ]]; then
    password=$(sed -n 's/^StoragePass=//p' "$DBD_CONF")
  else
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  fi
  cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$password
LogFile=/var/log/slurm/slurmdbd.log
PidFile=$(pid_file slurmdbd)
EOF
  chown slurm:slurm "$DBD_CONF"
  chmod 600 "$DBD_CONF"
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /var/log/mysql /run/munge /run/mysqld
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
}

start_database() {
  # Forked off a new session (setsid -f): it does not daemonize itself, and must outlive the caller.
  launch mariadbd setsid -f /usr/sbin/mariadbd --user=mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file="$(pid_file mariadbd)" --bind-address=127.0.0.1 </dev/null >>/var/log/mysql/mariadbd.log 2>&1
  wait_for 30 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
  local password
  password=$(sed -n 's/^StoragePass=//p' "$DBD_CONF")
  mariadb --socket=/run/mysqld/mysqld.sock <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start() {
  [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts system daemons)"
  install
  configure
  launch munged runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged munge -n
  start_database
  launch slurmdbd /usr/sbin/slurmdbd
  # The very first start creates the accounting tables (about 10 s).
  wait_for 60 slurmdbd sacctmgr -n show cluster
  launch slurmctld /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  # -N: the node is named localhost whatever the machine's hostname is.
  launch slurmd /usr/sbin/slurmd -N localhost
  wait_for 30 "the node" node_idle
  echo "slurm is up: $(sinfo -h -o '%P %D %T %c CPUs')"
}

node_idle() { sinfo -h -n localhost -o %T | grep -qE '^(idle|mixed|allocated)'; }

stop() {
  local daemon file pid
  [[ -s $STARTED ]] || { echo "nothing to stop: no daemon was started by this script"; return; }
  for daemon in "${DAEMONS[@]}"; do
    grep -qx "$daemon" "$STARTED" && running "$daemon" || continue
    file=$(pid_file "$daemon")
    pid=$(cat "$file")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "$daemon (pid $pid) did not stop within 10 s"
    echo "stopped $daemon (pid $pid)"
  done
  rm -f "$STARTED"
}

status() {
  local daemon code=0
  for daemon in "${DAEMONS[@]}"; do
    if running "$daemon"; then echo "$daemon: running (pid $(cat "$(pid_file "$daemon")"))"
    else echo "$daemon: stopped"; code=3; fi
  done
  return $code
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
