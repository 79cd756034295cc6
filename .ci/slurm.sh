#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on this host, for CI and for trying profiles/slurm.
#
#   .ci/slurm.sh run [--dump-jobs FILE] [--keep] -- <command...>
#       start munged, slurmctld and slurmd, wait until the node is idle, run the command with
#       SLURM_CONF exported (so sbatch/squeue/scontrol and Snakemake's slurm executor talk to
#       this cluster), then cancel any leftover job and stop the daemons - always, also when the
#       command fails or the script is interrupted. Exits with the command's exit status.
#       --dump-jobs FILE  before stopping, write `scontrol show job -d --oneliner` of every
#                         job of the session to FILE (tests/slurm/slurm_jobs.py reads it)
#       --keep            keep the state directory (configs, daemon logs) and print its path
#   .ci/slurm.sh selftest
#       the cluster's own smoke test: `sbatch --wrap hostname` on the default partition and
#       `sbatch -p gpu --gres=gpu:1` both complete, and the GPU job was allocated the GPU.
#
# The cluster: one node named after this host (`hostname -s`) advertising at least 32 CPUs and
# 256 GB (SlurmdParameters=config_overrides; nothing enforces them, so the requests of
# profiles/slurm fit on a small box) and one fake GPU (gres.conf: Name=gpu File=/dev/null), so
# GPU requests are schedulable on a host without a GPU; partitions `cpu` (default) and `gpu` on
# that node; no accounting database (squeue serves job states; MinJobAge keeps finished jobs
# visible for an hour); no cgroups (proctrack/linuxproc, task/none), so it runs in containers.
# Daemons run as root. Config, state, munge key and logs live in a temporary directory; the only
# file outside it is a symlink /etc/slurm/slurm.conf -> that config while the cluster runs (the
# nested srun of Snakemake's jobs finds no cluster otherwise), removed at exit. The script stops
# when a real /etc/slurm/slurm.conf exists, or another of its clusters runs: one at a time.
# Debian's slurm-wlm and munge are installed with apt-get when missing (needs root).
#
# Environment: SLURM_CI_DIR (state directory; default: a new mktemp directory, removed at exit),
# SLURM_CI_PORT (slurmctld port, slurmd uses the next one; default: the first free pair from 6817),
# SLURM_CI_CPUS / SLURM_CI_MEM_MB (what the node advertises; defaults 32 / 262144, at least the
# real ones), SLURM_CI_TIMEOUT (seconds to wait for the node to come up; default 60),
# SLURM_CI_ETC_LINK=0 (no /etc/slurm/slurm.conf symlink; then Snakemake jobs fail in srun).
# Inside the command: SLURM_CONF, SLURM_CI_DIR (daemon logs in $SLURM_CI_DIR/log), SLURM_CI_NODE.
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 2; }
log() { echo "slurm.sh: $*" >&2; }

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- installation
ensure_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]} (or install slurm-wlm and munge)"
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # the packages' init scripts must not start the system-wide daemons
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; } ||
        { [ $made_policy -eq 1 ] && rm -f "$policy"; die "apt-get install slurm-wlm munge failed"; }
    [ $made_policy -eq 1 ] && rm -f "$policy"
    return 0
}

# ---------------------------------------------------------------- cluster lifecycle
PIDS=()            # daemons started by this script, in start order
OWN_DIR=0          # 1 when DIR was created here (removed at exit unless --keep)
KEEP=0
DUMP_JOBS=""
CMD_PID=""         # the command of `run`, while it runs

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
    local p=${SLURM_CI_PORT:-}
    if [ -n "$p" ]; then CTLD_PORT=$p; SLURMD_PORT=$((p + 1)); return; fi
    for p in $(seq 6817 2 6917); do
        if port_free "$p" && port_free $((p + 1)); then CTLD_PORT=$p; SLURMD_PORT=$((p + 1)); return; fi
    done
    die "no free port pair in 6817-6918"
}

write_config() {
    rm -rf "$DIR"/state "$DIR"/spool  # a reused SLURM_CI_DIR starts without old jobs
    mkdir -p "$DIR"/{etc,state,spool,log,run,munge,munge-key}
    # munged wants its socket's directories executable by all, its key private
    chmod 755 "$DIR" "$DIR/munge"
    chmod 700 "$DIR/munge-key"
    NODE=$(hostname -s)
    # The node advertises at least SLURM_CI_CPUS CPUs and SLURM_CI_MEM_MB memory (defaults 32 and
    # 262144, or more when the host has more), so that the requests of profiles/slurm fit on a
    # small box; config_overrides keeps slurmd from draining a node smaller than its config. No
    # cgroups: nothing enforces the requests, they are scheduling bookkeeping only.
    local cpus mem real_cpus real_mem
    real_cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -n 1)
    real_mem=$(slurmd -C | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' | head -n 1)
    if [ -z "$real_cpus" ] || [ -z "$real_mem" ]; then die "slurmd -C gave no CPUs/RealMemory"; fi
    cpus=${SLURM_CI_CPUS:-32}; [ "$real_cpus" -gt "$cpus" ] && cpus=$real_cpus
    mem=${SLURM_CI_MEM_MB:-262144}; [ "$real_mem" -gt "$mem" ] && mem=$real_mem
    local hw="CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem"
    cat >"$DIR/etc/slurm.conf" <<EOF
# single-node test cluster written by .ci/slurm.sh
ClusterName=vlprobe-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
# no cgroups (containers): plain process tracking, no task binding, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
# finished jobs stay visible to squeue/scontrol for an hour (no sacct here)
MinJobAge=3600
KillWait=5
SlurmdParameters=config_overrides
# schedule at once, not on the production cadence (sched_interval=60, bf_interval=30)
SchedulerParameters=sched_interval=2,bf_interval=2
InactiveLimit=0
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 $hw Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    # one fake GPU: schedulable, but there is no device behind it
    cat >"$DIR/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=/dev/null
EOF
    : >"$DIR/etc/plugstack.conf"
    : >"$DIR/.slurm-ci"
    dd if=/dev/urandom of="$DIR/munge-key/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge-key/munge.key"
}

# Snakemake's slurm-jobstep plugin runs each job's command through a nested `srun` with every
# SLURM_* variable removed, SLURM_CONF included: such an srun only finds the cluster through the
# default path. So /etc/slurm/slurm.conf becomes a symlink to this cluster's config while it runs
# (and is removed at exit). A real SLURM configuration there is never touched: the script stops.
ETC_CONF=/etc/slurm/slurm.conf
ETC_LINKED=0
link_etc_conf() {
    [ "${SLURM_CI_ETC_LINK:-1}" = 1 ] || return 0
    if [ -L "$ETC_CONF" ]; then
        local target other
        target=$(readlink "$ETC_CONF")
        other=$(dirname "$(dirname "$target")")
        [ -e "$other/.slurm-ci" ] || [ ! -e "$target" ] ||
            die "$ETC_CONF links to $target, not a .ci/slurm.sh cluster: not touching it"
        if [ -e "$target" ] && kill -0 "$(cat "$other/run/slurmctld.pid" 2>/dev/null)" 2>/dev/null; then
            die "another .ci/slurm.sh cluster is running ($other); one at a time"
        fi
        rm -f "$ETC_CONF"  # left behind by a run that was killed
    elif [ -e "$ETC_CONF" ]; then
        die "$ETC_CONF exists: this host has its own SLURM; use it, or run with SLURM_CI_ETC_LINK=0 (then srun inside Snakemake jobs cannot find this cluster)"
    fi
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$DIR/etc/slurm.conf" "$ETC_CONF"
    ETC_LINKED=1
}

start_daemons() {
    munged --foreground --key-file="$DIR/munge-key/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge-key/munged.seed" >>"$DIR/log/munged.out" 2>&1 &
    PIDS+=($!)
    wait_for "munged" 10 test -S "$DIR/munge/munge.socket"
    slurmctld -D -c -f "$DIR/etc/slurm.conf" >>"$DIR/log/slurmctld.out" 2>&1 &
    PIDS+=($!)
    wait_for "slurmctld" 20 scontrol ping
    slurmd -D -f "$DIR/etc/slurm.conf" >>"$DIR/log/slurmd.out" 2>&1 &
    PIDS+=($!)
    wait_for "node $NODE idle" "${SLURM_CI_TIMEOUT:-60}" node_idle
}

node_idle() {
    local states
    states=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | sort -u)
    [ "$states" = idle ]
}

wait_for() {  # wait_for <what> <seconds> <command...>
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 4; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { show_logs; die "a daemon died while waiting for $what"; }
        done
        sleep 0.25
    done
    show_logs
    die "timed out after ${secs}s waiting for $what"
}

show_logs() {
    local f
    for f in "$DIR"/log/*; do
        [ -s "$f" ] || continue
        echo "---- $f (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    if [ -n "$CMD_PID" ] && kill -0 "$CMD_PID" 2>/dev/null; then
        # SIGINT first: Snakemake then cancels its SLURM jobs and exits (on SIGTERM it would
        # wait for them to finish); then SIGTERM, then SIGKILL
        local sig
        for sig in INT TERM KILL; do
            kill -0 "$CMD_PID" 2>/dev/null || break
            log "stopping the command (pid $CMD_PID, SIG$sig)"
            kill -"$sig" "$CMD_PID" 2>/dev/null
            for _ in $(seq 1 80); do
                kill -0 "$CMD_PID" 2>/dev/null || break
                sleep 0.25
            done
        done
        wait "$CMD_PID" 2>/dev/null
    fi
    if [ ${#PIDS[@]} -ge 2 ] && kill -0 "${PIDS[1]}" 2>/dev/null; then
        if [ -n "$DUMP_JOBS" ]; then
            scontrol show job -d --oneliner >"$DUMP_JOBS" 2>/dev/null
        fi
        # cancel what is still queued or running, and wait for its processes to end
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null)
        if [ -n "$jobs" ]; then
            log "cancelling leftover jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null
            for _ in $(seq 1 60); do
                [ -z "$(squeue -h -t R,CG,PD -o %i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    # stop the daemons in reverse start order: slurmd, slurmctld, munged
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ $ETC_LINKED -eq 1 ] && [ "$(readlink "$ETC_CONF")" = "$DIR/etc/slurm.conf" ]; then
        rm -f "$ETC_CONF"
    fi
    if [ $KEEP -eq 1 ]; then
        log "state kept in $DIR"
    elif [ $OWN_DIR -eq 1 ] && [ -n "${DIR:-}" ]; then
        rm -rf "$DIR"
    fi
    exit $rc
}

up() {
    ensure_packages
    if [ -n "${SLURM_CI_DIR:-}" ]; then
        DIR=$SLURM_CI_DIR
        mkdir -p "$DIR"
    else
        DIR=$(mktemp -d "${TMPDIR:-/tmp}/slurm-ci.XXXXXX")
        OWN_DIR=1
    fi
    DIR=$(cd "$DIR" && pwd)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    pick_ports
    write_config
    link_etc_conf
    export SLURM_CONF="$DIR/etc/slurm.conf" SLURM_CI_DIR="$DIR" SLURM_CI_NODE="$NODE"
    local t0=$SECONDS
    start_daemons
    log "cluster up in $((SECONDS - t0))s (node $NODE, ports $CTLD_PORT/$SLURMD_PORT, SLURM_CONF=$SLURM_CONF)"
}

# ---------------------------------------------------------------- commands
selftest() {
    local id1 id2 state line
    id1=$(sbatch --parsable -o "$DIR/log/job-%j.out" --wrap hostname)
    # shellcheck disable=SC2016  # expanded in the job
    id2=$(sbatch --parsable -p gpu --gres=gpu:1 -o "$DIR/log/job-%j.out" \
        --wrap 'echo "gpus=${SLURM_JOB_GPUS:-} cuda=${CUDA_VISIBLE_DEVICES:-}"')
    for id in "$id1" "$id2"; do
        for _ in $(seq 1 120); do
            state=$(squeue -h -t all -j "$id" -o %T 2>/dev/null)
            case $state in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
            sleep 0.5
        done
        echo "job $id: $state: $(cat "$DIR/log/job-$id.out" 2>/dev/null)"
        [ "$state" = COMPLETED ] || die "job $id ended $state"
    done
    line=$(scontrol show job -d --oneliner "$id2")
    echo "$line" | grep -Eo '(Partition|TresPerNode|TresPerJob|JOB_GRES)=[^ ]*' | sed 's/^/  /'
    # JOB_GRES (scontrol -d) is what the job was allocated; TresPerNode what it asked for
    echo "$line" | grep -q 'JOB_GRES=gpu:1' || die "job $id2 was not allocated a GPU (no JOB_GRES=gpu:1)"
    echo "selftest passed"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    run)
        while [ $# -gt 0 ]; do
            case $1 in
                --dump-jobs) DUMP_JOBS=$(realpath -m "$2"); shift 2 ;;
                --keep) KEEP=1; shift ;;
                --) shift; break ;;
                *) usage ;;
            esac
        done
        [ $# -gt 0 ] || usage
        up
        # In the background, so that a signal to this script runs the cleanup at once; with job
        # control on, so that it gets its own process group and does not ignore SIGINT (what
        # a non-interactive shell does to background commands): Snakemake cancels its SLURM
        # jobs on SIGINT. A Ctrl-C reaches this script, whose cleanup forwards it.
        set -m
        "$@" 0<&0 &
        CMD_PID=$!
        set +m
        set +e
        wait "$CMD_PID"
        rc=$?
        set -e
        CMD_PID=""
        exit $rc
        ;;
    selftest)
        up
        selftest
        ;;
    *) usage ;;
esac
