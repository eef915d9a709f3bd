#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for workstation use.
#
#   scripts/slurm_local.sh start    install what is missing, configure, start, wait until usable
#   scripts/slurm_local.sh stop     stop every daemon this script started
#   scripts/slurm_local.sh status   say which daemons are up
#   scripts/slurm_local.sh env      print the environment the client commands need (if any)
#
# Daemons: munged, mariadbd (private instance on 127.0.0.1), slurmdbd, slurmctld, slurmd. They run as
# root without systemd, each detached from the calling shell. Configuration, logs, pid files, spool and
# the database live in one state folder: $STEMLAB_SLURM_DIR (default /var/tmp/stemlab-slurm).
# Needs root (Debian 12 packages, SLURM 22.05).
set -euo pipefail

STATE=${STEMLAB_SLURM_DIR:-/var/tmp/stemlab-slurm}
DB_PORT=${STEMLAB_SLURM_DB_PORT:-3307}
CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819  # the SLURM defaults
CLUSTER=stemlab
PARTITION=cpu
ACCOUNT=stemlab
MARKER="# stemlab local SLURM cluster (written by scripts/slurm_local.sh)"
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
CONF=$ETC/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
MUNGE_SOCKET=/run/munge/munge.socket.2
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

die() { echo "slurm_local.sh: error: $*" >&2; exit 1; }
say() { echo "slurm_local.sh: $*"; }

# The last error line of a log file (else its last line), to put into a one-line failure message.
last_log_line() {
    [[ -s $1 ]] || { echo "no log"; return; }
    local line
    line=$(grep -iE 'error|fatal' "$1" | grep -vE '\] Aborting$' | tail -n 1)
    [[ -n $line ]] || line=$(grep -v '^\s*$' "$1" | tail -n 1)
    cut -c1-240 <<<"$line"
}

# Fail early, and clearly, when another program already listens on a port a daemon needs.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
need_free_port() {
    port_in_use "$1" && die "port $1 (for $2) is already in use on 127.0.0.1: another SLURM or MariaDB? $3"
    return 0
}

# wait_until SECONDS DESCRIPTION LOGFILE COMMAND...: poll COMMAND until it succeeds or fail clearly.
# With WATCH_PID set, fail at once when that process has exited.
wait_until() {
    local limit=$1 what=$2 logfile=$3
    shift 3
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [[ -n ${WATCH_PID:-} ]] && ! kill -0 "$WATCH_PID" 2>/dev/null; then
            die "$what exited (last error in $logfile: $(last_log_line "$logfile"))"
        fi
        ((SECONDS < deadline)) || die "$what not ready after ${limit} s (last line of $logfile: $(last_log_line "$logfile"))"
        sleep 0.5
    done
}

# Whether the pid in pid file $1 (NAME.pid) is a running NAME: a stale pid file (say, after a reboot)
# may name another process. Works for any user, unlike kill -0 on root's daemons.
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$(basename "$1" .pid)" ]]
}

pidfile_of() {
    case $1 in
        munged) echo "$RUN/munged.pid" ;;
        mariadbd) echo "$RUN/mariadb/mariadbd.pid" ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}

munge_works() { munge -n -S "$MUNGE_SOCKET" </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
# shellcheck disable=SC2120  # called with arguments through wait_until
db() { mariadb --no-defaults -S "$RUN/mariadb/mariadbd.sock" -u root "$@"; }
node_name() { hostname -s; }

# Client commands for this cluster, whichever slurm.conf the system has.
with_conf() { SLURM_CONF=$CONF "$@"; }
node_state() { with_conf sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null | head -n 1; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing) ]]; }
sacct_works() { with_conf sacct -n -X -o JobID -S now >/dev/null 2>&1; }

# A node drained earlier (say, by an unclean stop) does not come back by itself: resume it.
node_ready_or_resume() {
    [[ $(node_state) == drain* ]] && with_conf scontrol update nodename="$(node_name)" state=resume >/dev/null 2>&1
    node_ready
}

healthy() {
    local d
    for d in "${DAEMONS[@]}"; do
        [[ $d == munged ]] && { munge_works || return 1; continue; }
        pid_alive "$(pidfile_of "$d")" || return 1
    done
    node_ready && sacct_works
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "packages missing (${missing[*]}) and installing them needs root"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting system-wide daemons: this script starts its own.
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq >"$LOG/apt.log" 2>&1 || die "apt-get update failed (see $LOG/apt.log)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG/apt.log" 2>&1 \
        || die "apt-get install ${missing[*]} failed (last line of $LOG/apt.log: $(last_log_line "$LOG/apt.log"))"
    if [[ $(trap -p EXIT) == *policy-rc.d* ]]; then
        rm -f "$policy"
        trap - EXIT
    fi
}

# Write FILE (MODE) from stdin only when its content changes; returns 0 and lists FILE in CHANGED if it did.
CHANGED=()
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXX")  # created 0600
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv "$tmp" "$file"
    CHANGED+=("$(basename "$file")")
}

write_configs() {
    local name cpus sockets cores threads memory
    name=$(node_name)
    # `slurmd -C` reports this machine as slurmd sees it: CPUs, topology and RealMemory (MB).
    local probe
    probe=$(slurmd -C | head -n 1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$probe")
    sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$probe")
    cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$probe")
    threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$probe")
    memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")
    [[ -n $cpus && -n $memory ]] || die "could not read CPUs/RealMemory from 'slurmd -C' ($probe)"

    write_if_changed "$CONF" 644 <<EOF || true
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$name(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=20
MpiDefault=none
SwitchType=switch/none
# No cgroups: processes are tracked through /proc, which works in containers too.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory / cpus))
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults 60 s and 30 s), e.g. a requeued job whose wait ended.
SchedulerParameters=sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
PlugStackConfig=$ETC/plugstack.conf
NodeName=$name NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    write_if_changed "$ETC/cgroup.conf" 644 <<EOF || true
$MARKER
# Read by slurmd only if a cgroup plugin is enabled in slurm.conf (none is).
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF
    write_if_changed "$ETC/plugstack.conf" 644 <<EOF || true
$MARKER
EOF
    [[ -s $ETC/dbpass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/dbpass")
    write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF || true
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/dbpass")
StorageLoc=slurm_acct_db
EOF
}

# Point the default /etc/slurm/slurm.conf at ours unless it belongs to some other cluster.
link_system_conf() {
    if [[ ! -e $SYSTEM_CONF ]] || head -n 1 "$SYSTEM_CONF" 2>/dev/null | grep -qxF "$MARKER"; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -sfn "$CONF" "$SYSTEM_CONF"
    fi
}

start_munge() {
    munge_works && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
            || die "could not create /etc/munge/munge.key"
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file=/run/munge/munged.pid \
        --log-file=/var/log/munge/munged.log </dev/null >>"$LOG/munged.out" 2>&1 9>&- \
        || die "munged failed to start (last line of /var/log/munge/munged.log: $(last_log_line /var/log/munge/munged.log))"
    wait_until 15 munged /var/log/munge/munged.log munge_works
    # Remember that this script started it, so that stop stops it (and no system-wide one).
    cp /run/munge/munged.pid "$RUN/munged.pid"
}

start_mariadb() {
    local data=$STATE/mysql
    pid_alive "$(pidfile_of mariadbd)" && return 0
    mkdir -p "$RUN/mariadb"  # pid file and socket, readable by everyone (the data folder is not)
    chown mysql:mysql "$RUN/mariadb"
    chmod 755 "$RUN/mariadb"
    if [[ ! -d $data/mysql ]]; then
        mkdir -p "$data"
        chown mysql:mysql "$data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (last line of $LOG/mariadb-install.log: $(last_log_line "$LOG/mariadb-install.log"))"
    fi
    need_free_port "$DB_PORT" mariadbd "(choose another with STEMLAB_SLURM_DB_PORT)"
    UMASK=0644 setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$data" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --socket="$RUN/mariadb/mariadbd.sock" --pid-file="$RUN/mariadb/mariadbd.pid" \
        --log-error="$LOG/mariadb.log" --innodb-use-native-aio=0 --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
        --skip-name-resolve </dev/null >>"$LOG/mariadb.log" 2>&1 9>&- &
    WATCH_PID=$! wait_until 60 mariadbd "$LOG/mariadb.log" db -e "SELECT 1"
    local pass
    pass=$(cat "$ETC/dbpass")
    db <<EOF || die "could not create the accounting database and its user in mariadb"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

port_of() {
    case $1 in
        slurmdbd) echo "$DBD_PORT" ;;
        slurmctld) echo "$CTLD_PORT" ;;
        slurmd) echo "$SLURMD_PORT" ;;
    esac
}

# Start a SLURM daemon (each one forks itself into the background) unless its pid file is alive.
start_slurm_daemon() {
    local name=$1
    shift
    pid_alive "$RUN/$name.pid" && return 0
    need_free_port "$(port_of "$name")" "$name" "(stop it first)"
    SLURM_CONF=$CONF setsid "/usr/sbin/$name" "$@" </dev/null >>"$LOG/$name.out" 2>&1 9>&- \
        || die "$name failed to start (last line of $LOG/$name.log: $(last_log_line "$LOG/$name.log"))"
    wait_until 30 "$name" "$LOG/$name.log" pid_alive "$RUN/$name.pid"
}

sacctmgr_has() { with_conf sacctmgr -n -P list "$1" "$2" format="$1" 2>/dev/null | grep -qx "$2"; }
slurmdbd_answers() { with_conf sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

register_accounting() {
    wait_until 30 slurmdbd "$LOG/slurmdbd.log" slurmdbd_answers
    sacctmgr_has cluster "$CLUSTER" || with_conf sacctmgr -i add cluster "$CLUSTER" >/dev/null \
        || die "sacctmgr could not add cluster $CLUSTER"
    sacctmgr_has account "$ACCOUNT" || with_conf sacctmgr -i add account "$ACCOUNT" \
        cluster="$CLUSTER" description="local cluster" organization=stemlab >/dev/null \
        || die "sacctmgr could not add account $ACCOUNT"
    local user
    for user in root ${SUDO_USER:-}; do
        with_conf sacctmgr -n -P list association cluster="$CLUSTER" account="$ACCOUNT" user="$user" \
            format=user 2>/dev/null | grep -qx "$user" && continue
        with_conf sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null \
            || die "sacctmgr could not add user $user to account $ACCOUNT"
    done
}

cmd_start() {
    local t0=$SECONDS
    if healthy; then
        # Running already: done, unless this script now writes a different configuration.
        write_configs
        if ((${#CHANGED[@]} == 0)); then
            say "already running ($(node_name): $(node_state); partition $PARTITION)"
            return 0
        fi
        say "configuration changed (${CHANGED[*]}): restarting the SLURM daemons"
        stop_pid slurmd "$RUN/slurmd.pid"
        stop_pid slurmctld "$RUN/slurmctld.pid"
        stop_pid slurmdbd "$RUN/slurmdbd.pid"
    fi
    install_packages
    mkdir -p "$ETC" "$STATE/spool/ctld" "$STATE/spool/d"
    write_configs
    start_munge
    start_mariadb
    start_slurm_daemon slurmdbd
    register_accounting
    start_slurm_daemon slurmctld
    start_slurm_daemon slurmd
    wait_until 60 "node $(node_name) (sinfo)" "$LOG/slurmd.log" node_ready_or_resume
    wait_until 30 sacct "$LOG/slurmdbd.log" sacct_works
    link_system_conf
    say "started in $((SECONDS - t0)) s ($(node_name): $(node_state); partition $PARTITION; state in $STATE)"
}

stop_pid() {
    local name=$1 pidfile=$2 pid
    pid_alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    say "stopped $name"
}

cmd_stop() {
    local d
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        d=${DAEMONS[i]}
        stop_pid "$d" "$(pidfile_of "$d")"
    done
    rm -f "$RUN/munged.pid"
}

cmd_status() {
    local d pidfile all_up=0
    for d in "${DAEMONS[@]}"; do
        pidfile=$(pidfile_of "$d")
        if [[ $d == munged ]] && munge_works; then
            echo "munged: up$(pid_alive "$pidfile" && echo " (pid $(cat "$pidfile"))" || echo " (not started here)")"
        elif [[ $d != munged ]] && pid_alive "$pidfile"; then
            echo "$d: up (pid $(cat "$pidfile"))"
        else
            echo "$d: down"
            all_up=1
        fi
    done
    if ((all_up == 0)); then
        echo "node $(node_name): $(node_state || true); sacct: $(sacct_works && echo answers || echo fails)"
    fi
    return $all_up
}

cmd_env() {
    if [[ $(readlink -f "$SYSTEM_CONF" 2>/dev/null) == "$(readlink -f "$CONF")" ]]; then
        echo "# nothing needed: $SYSTEM_CONF is this cluster's configuration"
    else
        echo "export SLURM_CONF=$CONF"
    fi
}

main() {
    local cmd=${1:-}
    case $cmd in
        start | stop | status | env) ;;
        *) die "usage: $0 {start|stop|status|env} (got '${cmd}')" ;;
    esac
    # start/stop need root; a user with password-less sudo (as on CI runners) gets it here.
    if [[ $cmd == start || $cmd == stop ]] && ((EUID != 0)); then
        if [[ $cmd == start ]] && healthy; then
            say "already running ($(node_name): $(node_state); partition $PARTITION)"
            return 0
        fi
        if ! { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; then
            die "$cmd needs root (or password-less sudo): it runs munged, mariadbd and the SLURM daemons"
        fi
        exec sudo -n --preserve-env=STEMLAB_SLURM_DIR,STEMLAB_SLURM_DB_PORT "$0" "$cmd"
    fi
    if [[ $cmd == start || $cmd == stop ]]; then
        mkdir -p "$STATE" "$RUN" "$LOG"
        chmod 755 "$STATE"
        # One start/stop at a time: test sessions running side by side share the cluster.
        exec 9>"$STATE/.lock"
        flock -w 300 9 || die "another start/stop holds $STATE/.lock"
    fi
    "cmd_$cmd"
}

main "$@"
