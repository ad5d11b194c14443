#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by start-cluster.sh.
#
#   stop-cluster.sh          cancel all jobs, stop slurmd, slurmctld, slurmdbd
#   stop-cluster.sh --all    ... and MariaDB and munged too
#
# Idempotent: exits 0 when nothing is running. MariaDB (like munged) is
# left running by default: it holds no SLURM state in memory, and the next
# start-cluster.sh is faster without restarting it.
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF
RUN_DIR=/run/slurm
MUNGE_PID=/run/munge/munged.pid
DB_PID=/run/mysqld/mysqld.pid
STOP_TIMEOUT=${SLURM_STOP_TIMEOUT:-30}

all=0
for arg in "$@"; do
    case "$arg" in
        --all) all=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "stop-cluster: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { printf 'stop-cluster: %s\n' "$*" >&2; }

# pids_of PIDFILE NAME: the daemon's pid from its pid file, else any process
# with exactly that name (covers daemons started by hand / by an old config
# with another pid file path).
pids_of() {
    local pid
    if [ -s "$1" ]; then
        pid=$(cat "$1" 2>/dev/null || true)
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
            echo "$pid"; return 0
        fi
    fi
    pgrep -x "$2" || true
}

# stop_daemon PIDFILE NAME: SIGTERM, wait, then SIGKILL.
stop_daemon() {
    local pids deadline
    pids=$(pids_of "$1" "$2")
    [ -n "$pids" ] || return 0
    log "stopping $2 (pid $(echo $pids))"
    kill $pids 2>/dev/null || true
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    while kill -0 $pids 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$2 ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -9 $pids 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$1"
}

stopped=""

# Cancel jobs while slurmctld still answers, so that slurmd kills their
# processes and no slurmstepd is left behind.
if [ -n "$(pids_of "$RUN_DIR/slurmctld.pid" slurmctld)" ] && command -v squeue >/dev/null \
   && timeout 10 scontrol ping >/dev/null 2>&1; then
    # %F is the array's base job id (the plain id for other jobs), so one
    # scancel per array covers all of its tasks, pending ones included.
    jobs=$(squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        scancel $jobs 2>/dev/null || true
        # Jobs stay listed (state CG) until KillWait has passed and their
        # processes are gone; wait for that but not forever.
        deadline=$(( $(date +%s) + STOP_TIMEOUT ))
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "$(date +%s)" -lt "$deadline" ]; do
            sleep 0.5
        done
        left=$(squeue -h -o '%i %T' 2>/dev/null | tr '\n' ' ')
        [ -z "$left" ] || log "jobs still listed after ${STOP_TIMEOUT}s: $left"
    fi
fi

if [ -n "$(pids_of "$RUN_DIR/slurmd.pid" slurmd)" ]; then
    stop_daemon "$RUN_DIR/slurmd.pid" slurmd; stopped="$stopped slurmd"
fi
if [ -n "$(pids_of "$RUN_DIR/slurmctld.pid" slurmctld)" ]; then
    # On SIGTERM slurmctld saves its state, so a later start resumes from it.
    stop_daemon "$RUN_DIR/slurmctld.pid" slurmctld; stopped="$stopped slurmctld"
fi
# After slurmctld: on shutdown it hands its last job records to slurmdbd.
if [ -n "$(pids_of "$RUN_DIR/slurmdbd.pid" slurmdbd)" ]; then
    stop_daemon "$RUN_DIR/slurmdbd.pid" slurmdbd; stopped="$stopped slurmdbd"
fi

# A job step whose slurmd went away (e.g. slurmctld was already dead, so
# nothing could be cancelled) keeps running under its slurmstepd.
# Kill them together with the job processes below them.
descendants() { # descendants PID...: the PIDs and all their descendants
    local p
    for p in "$@"; do
        echo "$p"
        descendants $(pgrep -P "$p" || true)
    done
}
steps=$(pgrep -x slurmstepd || true)
if [ -n "$steps" ]; then
    victims=$(descendants $steps | sort -u | tr '\n' ' ')
    log "killing leftover slurmstepd and their jobs: $victims"
    kill -9 $victims 2>/dev/null || true
    stopped="$stopped slurmstepd"
fi

if [ "$all" = 1 ]; then
    # mysqld is the same binary under its old name (e.g. started by a
    # service script); the pid file check accepts only the given name.
    for name in mariadbd mysqld; do
        if [ -n "$(pids_of "$DB_PID" "$name")" ]; then
            stop_daemon "$DB_PID" "$name"; stopped="$stopped $name"
        fi
    done
fi
if [ "$all" = 1 ] && [ -n "$(pids_of "$MUNGE_PID" munged)" ]; then
    stop_daemon "$MUNGE_PID" munged; stopped="$stopped munged"
fi

if [ -n "$stopped" ]; then
    echo "slurm cluster stopped:$stopped"
else
    echo "slurm cluster not running; nothing to stop"
fi
if [ "$all" = 0 ]; then
    left=""
    [ -z "$(pids_of "$DB_PID" mariadbd)" ] || left="$left mariadbd"
    [ -z "$(pids_of "$MUNGE_PID" munged)" ] || left="$left munged"
    [ -z "$left" ] || log "left running:$left (use --all to stop them too)"
fi
