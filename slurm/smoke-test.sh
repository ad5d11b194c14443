#!/usr/bin/env bash
# Smoke-test the local cluster started by start-cluster.sh.
#
# Prints PASS/FAIL per check and exits non-zero if any check failed.
# Takes about a minute, most of it waiting for the preemption round trip.
# Job states come from `scontrol show job` while slurmctld knows the job
# (MinJobAge = 5 s after it ends), then from `sacct` (slurmdbd), and from
# files the jobs write.
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF
WORK=$(mktemp -d /tmp/slurm-smoke.XXXXXX)
NCPU=$(sinfo -h -N -o %c 2>/dev/null | head -n 1 || true)
NCPU=${NCPU:-1}

failures=0
# submit runs in $(...) subshells, so job ids are collected in a file.
IDS=$WORK/submitted.ids

cleanup() {
    # Never leave smoke-test jobs behind (e.g. after Ctrl-C or a failure).
    if [ -s "$IDS" ]; then
        scancel $(cat "$IDS") 2>/dev/null || true
    fi
    if [ "$failures" -eq 0 ]; then rm -rf "$WORK"; else echo "job files kept in $WORK" >&2; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

report() { # report PASS|FAIL NAME START DETAIL
    printf '%-4s  %-44s %6ss  %s\n' "$1" "$2" "$(since "$3")" "$4"
    [ "$1" = PASS ] || failures=$((failures + 1))
}

submit() { # submit SBATCH-ARGS...: echo the job id, remember it for cleanup
    local id
    id=$(sbatch --parsable -D "$WORK" "$@") || return 1
    id=${id%%;*}
    echo "$id" >> "$IDS"
    echo "$id"
}

# field JOBID NAME: one field of `scontrol show job` (first array task if an
# array). Once slurmctld has forgotten the job, JobState and ExitCode come
# from sacct ("CANCELLED by 0" -> CANCELLED); other fields read GONE.
field() {
    local out
    out=$(scontrol show job -o "$1" 2>/dev/null) || true
    if [ -z "$out" ]; then
        case "$2" in
            JobState) out=$(sacct -X -n -P -j "$1" -o State 2>/dev/null | head -n 1); out=${out%% *} ;;
            ExitCode) out=$(sacct -X -n -P -j "$1" -o ExitCode 2>/dev/null | head -n 1) ;;
        esac
        echo "${out:-GONE}"
        return
    fi
    out=$(grep -m 1 "[[:space:]]$2=" <<<"$out" || true)
    sed -n "s/.*[[:space:]]$2=\([^[:space:]]*\).*/\1/p" <<<" $out"
}

# wait_state JOBID REGEX TIMEOUT: wait until the job's state matches REGEX.
wait_state() {
    local deadline=$(( $(date +%s) + $3 )) st
    while :; do
        st=$(field "$1" JobState)
        [[ "$st" =~ ^($2)$ ]] && return 0
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timeout: job $1 is $st, wanted $2" >&2; return 1; }
        sleep 0.5
    done
}

# sacct_wait JOBID WANT TIMEOUT: poll `sacct -X ... -o State,ExitCode` until
# it prints WANT (a regex, e.g. 'FAILED\|3:0'); echo the last record. sacct
# may trail squeue/scontrol by a fraction of a second.
sacct_wait() {
    local deadline=$(( $(date +%s) + $3 )) rec
    while :; do
        rec=$(sacct -X -n -P -j "$1" -o State,ExitCode 2>/dev/null | head -n 1)
        [[ "$rec" =~ ^($2)$ ]] && { echo "$rec"; return 0; }
        [ "$(date +%s)" -lt "$deadline" ] || { echo "${rec:-no record}"; return 1; }
        sleep 0.2
    done
}

echo "slurm smoke test: $(sinfo -V 2>/dev/null), work dir $WORK"

# -------------------------------------------------------------- cluster up --
t=$(now)
if ! scontrol ping >/dev/null 2>&1; then
    report FAIL "slurmctld reachable" "$t" "scontrol ping failed; run slurm/start-cluster.sh"
    exit 1
fi
state=$(sinfo -h -N -o %t | head -n 1)
if [[ "$state" =~ ^(idle|mix|alloc)$ ]]; then
    report PASS "node usable" "$t" "state=$state cpus=$NCPU"
else
    report FAIL "node usable" "$t" "state=$state"
fi
# The preemption check needs the whole node; give earlier jobs a moment.
for _ in $(seq 60); do [ -z "$(squeue -h -o %i)" ] && break; sleep 0.5; done
[ -z "$(squeue -h -o %i)" ] || echo "warning: queue not empty: $(squeue -h -o '%i %P %T' | tr '\n' ' ')" >&2

# --------------------------------------------------- rejected at submit --
# Memory is consumable (CR_Core_Memory): more than the node has can never
# run, and slurmctld says so at submit time instead of leaving it PENDING.
t=$(now)
if out=$(sbatch --parsable -D "$WORK" --mem=999999 --wrap true 2>&1); then
    echo "${out%%;*}" >> "$IDS"
    report FAIL "sbatch --mem=999999 rejected" "$t" "accepted as job $out"
else
    report PASS "sbatch --mem=999999 rejected" "$t" "$(tail -n 1 <<<"$out")"
fi
t=$(now)
if out=$(sbatch --parsable -D "$WORK" -p nope --wrap true 2>&1); then
    echo "${out%%;*}" >> "$IDS"
    report FAIL "sbatch -p nope rejected" "$t" "accepted as job $out"
else
    report PASS "sbatch -p nope rejected" "$t" "$(tail -n 1 <<<"$out")"
fi

# ----------------------------------------------------------- plain --wrap --
t=$(now)
plain=""
if plain=$(submit -o plain-%j.out --wrap 'echo "hello from $SLURM_JOB_ID on $(hostname -s)"') \
   && wait_state "$plain" COMPLETED 60 \
   && grep -q "hello from $plain" "$WORK/plain-$plain.out" \
   && [ "$(field "$plain" ExitCode)" = "0:0" ]; then
    report PASS "sbatch --wrap completes" "$t" "job $plain: $(cat "$WORK/plain-$plain.out")"
else
    report FAIL "sbatch --wrap completes" "$t" "job ${plain:-?} state=$(field "${plain:-0}" JobState)"
fi

# ------------------------------------------------------------- accounting --
# submitit asks sacct about jobs that end without a result file; it must
# know finished, failed and cancelled jobs right after they end.
t=$(now)
cluster=$(scontrol show config 2>/dev/null | awk '$1 == "ClusterName" {print $3}')
if [ -n "$cluster" ] && sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$cluster"; then
    report PASS "cluster registered in slurmdbd" "$t" "sacctmgr list cluster: $cluster"
else
    report FAIL "cluster registered in slurmdbd" "$t" "'${cluster:-?}' not in: $(sacctmgr -n -P list cluster format=cluster 2>&1 | tr '\n' ' ')"
fi
t=$(now)
if [ -n "$plain" ] && rec=$(sacct_wait "$plain" 'COMPLETED\|0:0' 10); then
    report PASS "sacct: completed job" "$t" "job $plain: State|ExitCode=$rec"
else
    report FAIL "sacct: completed job" "$t" "job ${plain:-?}: ${rec:-no job}"
fi
t=$(now)
rec=""
if id=$(submit -o /dev/null --wrap 'exit 3') && wait_state "$id" 'FAILED|GONE' 60 \
   && rec=$(sacct_wait "$id" 'FAILED\|3:0' 10); then
    report PASS "sacct: failed job (exit 3)" "$t" "job $id: State|ExitCode=$rec"
else
    report FAIL "sacct: failed job (exit 3)" "$t" "job ${id:-?}: ${rec:-state $(field "${id:-0}" JobState)}"
fi
t=$(now)
rec=""
if id=$(submit -o /dev/null --wrap 'sleep 600') && wait_state "$id" RUNNING 60; then
    scancel "$id" || true
    if rec=$(sacct_wait "$id" 'CANCELLED by [0-9]+\|0:[0-9]+' 15); then
        report PASS "sacct: cancelled job" "$t" "job $id: State|ExitCode=$rec"
    else
        report FAIL "sacct: cancelled job" "$t" "job $id: $rec"
    fi
else
    report FAIL "sacct: cancelled job" "$t" "job ${id:-?} never ran"
fi

# ------------------------------------------------------------- job array --
# Each task records start/end times; the %2 throttle must keep at most two
# running at once, and (1 CPU + DefMemPerCPU each, batch_sched_delay=0)
# two must run side by side.
t=$(now)
if id=$(submit --array=0-3%2 -c 1 -o arr-%A_%a.out \
        --wrap 'echo "$(date +%s.%N) start $SLURM_ARRAY_TASK_ID"; sleep 3; echo "$(date +%s.%N) end $SLURM_ARRAY_TASK_ID"'); then
    throttle=$(field "$id" ArrayTaskThrottle)
    ok=1
    for task in 0 1 2 3; do
        wait_state "${id}_$task" COMPLETED 90 || ok=0
    done
    n_out=$(grep -l end "$WORK"/arr-"$id"_*.out 2>/dev/null | wc -l || true)
    # Max number of overlapping [start, end] intervals.
    maxpar=$(cat "$WORK"/arr-"$id"_*.out 2>/dev/null | sort -n |
             awk '$2 == "start" {n++; if (n > m) m = n} $2 == "end" {n--} END {print m + 0}' || true)
    if [ "$ok" = 1 ] && [ "$n_out" = 4 ] && [ "${maxpar:-0}" = 2 ] && [ "$throttle" = 2 ]; then
        report PASS "array 0-3%2 (4 tasks, throttle 2)" "$t" "job $id: 4/4 completed, max concurrent=$maxpar"
    else
        report FAIL "array 0-3%2 (4 tasks, throttle 2)" "$t" "job $id: outputs=$n_out max concurrent=$maxpar throttle=$throttle"
    fi
else
    report FAIL "array 0-3%2 (4 tasks, throttle 2)" "$t" "sbatch failed"
fi

# ------------------------------------------------------------- fake GPUs --
t=$(now)
if id=$(submit --gres=gpu:1 -o gpu-%j.out \
        --wrap 'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"; echo "srun: $(srun --gres=gpu:1 printenv CUDA_VISIBLE_DEVICES)"') \
   && wait_state "$id" COMPLETED 60 \
   && grep -Eq '^CUDA_VISIBLE_DEVICES=[0-9]+$' "$WORK/gpu-$id.out"; then
    report PASS "--gres=gpu:1 sets CUDA_VISIBLE_DEVICES" "$t" "job $id: $(tr '\n' ' ' < "$WORK/gpu-$id.out")"
else
    report FAIL "--gres=gpu:1 sets CUDA_VISIBLE_DEVICES" "$t" "job ${id:-?}: $(cat "$WORK/gpu-${id:-0}.out" 2>/dev/null | tr '\n' ' ')"
fi

# ------------------------------------------------------------ preemption --
# A requeueable job fills the node in the low-tier 'debug' partition; a job
# in 'high' needs the same CPUs, so slurmctld preempts the debug job:
# SIGTERM to its steps at once, GraceTime later SIGTERM to the batch script
# too (then SIGKILL after KillWait), requeue, and after cred_expire it runs
# again with SLURM_RESTART_COUNT=1 and finishes.
cat > "$WORK/victim.sh" <<'EOF'
#!/bin/bash
m=$PWD/victim.marker
r=${SLURM_RESTART_COUNT:-0}
echo "$(date +%s.%N) batch-start restart=$r" >> "$m"
trap 'echo "$(date +%s.%N) batch-TERM restart=$r" >> "$m"; exit 143' TERM
if [ "$r" -gt 0 ]; then echo "$(date +%s.%N) done restart=$r" >> "$m"; exit 0; fi
# The work runs as a step (like submitit's srun) and gets the first SIGTERM
# at once; like submitit it notes it and carries on. (A job that exits by
# itself during GraceTime just ends -- it is NOT requeued.)
srun bash -c 'trap "echo \$(date +%s.%N) step-TERM >> '"$m"'" TERM; while :; do sleep 600 & wait $!; done' &
wait
EOF
t=$(now)
victim="" high=""
if victim=$(submit -p debug --requeue -c "$NCPU" -o victim-%j.out "$WORK/victim.sh") \
   && wait_state "$victim" RUNNING 60; then
    sleep 2   # let the srun step start, so it is there to be signalled
    t_high=$(now)
    if high=$(submit -p high -c "$NCPU" -o high-%j.out --wrap 'echo "$(date +%s.%N) high-start"; sleep 2'); then
        wait_state "$high" COMPLETED 120 || true
    fi
    hstate=$(field "${high:-0}" JobState)
    if [ "$hstate" = COMPLETED ]; then
        report PASS "preempt: high job ran" "$t_high" "job $high started $(awk '{printf "%.1f", $1 - '"$t_high"'}' "$WORK/high-$high.out")s after submit"
    else
        report FAIL "preempt: high job ran" "$t_high" "job ${high:-?} state=$hstate"
    fi
    if grep -q TERM "$WORK/victim.marker" 2>/dev/null; then
        report PASS "preempt: victim got SIGTERM" "$t" "$(awk -v t0="$t_high" '/TERM/ {printf "%s at +%.1fs; ", $2, $1 - t0}' "$WORK/victim.marker")"
    else
        report FAIL "preempt: victim got SIGTERM" "$t" "no TERM in marker: $(tr '\n' ' ' < "$WORK/victim.marker" 2>/dev/null)"
    fi
    restarts=$(field "$victim" Restarts)
    if [ "${restarts:-0}" != GONE ] && [ "${restarts:-0}" -ge 1 ]; then
        report PASS "preempt: victim requeued" "$t" "job $victim Restarts=$restarts state=$(field "$victim" JobState) reason=$(field "$victim" Reason)"
    else
        report FAIL "preempt: victim requeued" "$t" "job $victim Restarts=$restarts state=$(field "$victim" JobState)"
    fi
    # Requeued jobs wait cred_expire+1 s (Reason=BeginTime) before rerunning.
    if wait_state "$victim" COMPLETED 120 && grep -q "done restart=1" "$WORK/victim.marker"; then
        report PASS "preempt: victim reran and completed" "$t" "job $victim finished with SLURM_RESTART_COUNT=1"
    else
        report FAIL "preempt: victim reran and completed" "$t" "job $victim state=$(field "$victim" JobState): $(tr '\n' ' ' < "$WORK/victim.marker" 2>/dev/null)"
    fi
else
    report FAIL "preempt: victim started" "$t" "job ${victim:-?} state=$(field "${victim:-0}" JobState)"
fi

# ------------------------------------------------------- scancel -s KILL --
# The job ignores SIGTERM, so only a real SIGKILL ends it; check its process
# is really gone, not just that slurmctld changed the state.
t=$(now)
if id=$(submit -o kill-%j.out --wrap 'trap "" TERM; echo $$ > kill.pid; sleep 600 & echo $! >> kill.pid; wait') \
   && wait_state "$id" RUNNING 60; then
    for _ in $(seq 50); do [ -s "$WORK/kill.pid" ] && [ "$(wc -l < "$WORK/kill.pid")" -ge 2 ] && break; sleep 0.2; done
    scancel -s KILL "$id" || true
    st_ok=0; alive=""
    wait_state "$id" 'CANCELLED|FAILED|COMPLETED' 30 && st_ok=1
    for _ in $(seq 50); do
        alive=""
        for p in $(cat "$WORK/kill.pid" 2>/dev/null); do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
        [ -z "$alive" ] && break
        sleep 0.2
    done
    if [ "$st_ok" = 1 ] && [ -z "$alive" ] && [ -s "$WORK/kill.pid" ]; then
        report PASS "scancel -s KILL" "$t" "job $id state=$(field "$id" JobState) exit=$(field "$id" ExitCode), processes gone"
    else
        report FAIL "scancel -s KILL" "$t" "job $id state=$(field "$id" JobState) still alive:${alive:- none}"
    fi
else
    report FAIL "scancel -s KILL" "$t" "job ${id:-?} never ran"
fi

if [ "$failures" -eq 0 ]; then
    echo "smoke test: all checks passed"
else
    echo "smoke test: $failures check(s) FAILED"
    exit 1
fi
