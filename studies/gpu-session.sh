#!/usr/bin/env bash
# The GPU work of the training studies, in time-boxed chunks that resume where the last one stopped:
# for a GPU machine that gets a copy of this checkout (no `pip install`, maybe no .git) and gives back
# only what one folder holds.
#
#   bash studies/gpu-session.sh OUTDIR SECONDS PHASE...
#   PHASE: bench | bench-fast | profile | fastcheck | survival | zca-cifar10 | zca-cifar10-long | zca-cifar10-paper
#
# bench: benchmarks/bench_train_step.py --device cuda (float32 with the throughput of 1, 4, 8
#   concurrent processes — choose JOBS from it —, then float64) → OUTDIR/bench_train_step.md.
# bench-fast: today's training loop vs the fast path side by side (1 process, JOBS processes, JOBS
#   runs interleaved in one process, JOBS and 12 runs stacked in one network, torch.compile of the trunk),
#   at most BENCH_S (120) seconds
#   → OUTDIR/bench_fast.md and OUTDIR/bench_fast.json (the survival phase sizes its runs from it).
# profile: benchmarks/profile_train_step.py --device cuda: GPU-busy ms, kernels and host syncs per step and
#   the top operators, today's loop, the fast path and 6 runs stacked in one network (≈ 1–2 min)
#   → OUTDIR/profile_train_step.md.
# fastcheck: the same short-protocol cells on the plain and the fast path, failure counts compared by
#   Fisher's exact test (python -m stabkit.train.fastcheck) → OUTDIR/fastcheck.{md,json}; with STACK=R
#   the fast runs train R seeds at a time stacked in one network (--stacked R).
# survival: WHOLE runs of studies/zca-cifar10-survival.toml (or $SURVIVAL_STUDY): asks
#   `python -m stabkit.train.session` how many runs fit in the time left (JOBS at once; time per run
#   from the study's finished runs, else from OUTDIR/bench_fast.json or $BENCH_JSON, else $RUN_S),
#   starts exactly those (`stabkit run … --max-cells N --reuse-stale`), and asks again while a wave still fits
#   (runs that stopped at a NaN loss leave time). A run cut by the deadline is never written: the
#   runner writes a cell only when its run finished, so nothing half-done is counted; and each run
#   ends itself at an epoch's end before the deadline (STABKIT_RUN_DEADLINE, stabkit.train.loop) when
#   the plan was too hopeful: it is then written as a run censored at the epochs it reached (a run that
#   would start after that deadline does not start: its cell is recorded as an error and run again in a
#   later window). The survival study's cells are committed (its reports/…/.gitignore ignores only the
#   lock), so a later window resumes from the checkout itself; runs made by earlier commits are kept
#   (--reuse-stale: a run cannot be redone cheaply, and each cell records its own commit). $SURVIVAL_SET:
#   extra `--set key=value` arguments (e.g. "--set epochs=60" when 100 epochs do not fit);
#   FIT_HORIZON=1: when not even one wave of the study's horizon fits, run the most whole epochs that
#   one wave can finish (`python -m stabkit.train.session … --fit-epochs`; each run records its horizon).
#   A fallback horizon E is a grid of its own (cell ids carry the horizon, and `stabkit report` shows the
#   grid of the last run): in later windows pin it, SURVIVAL_SET="--set epochs=E" without FIT_HORIZON,
#   so that the runs of every window accumulate in one grid instead of re-running the same seeds.
#   STACK=R: R runs at a time stacked in one network (`stabkit run --jobs R --stack R --max-cells R`, one
#   wave per chunk: consecutive cells of one method × d form a stack, each stack its own process, so a
#   wave split by finished seeds still runs all at once; stabkit.train.stacked_loop; the plan from the
#   bench's `fast, stacked` rows); give the seed blocks that size too (SURVIVAL_SET="--set seed_block=R").
#   STACK=auto: the bench chooses, once (`python -m stabkit.train.session --choose-stack`: of JOBS fast
#   processes and the stacked rows of ≥ JOBS runs, the ways that finish the most whole runs in the
#   window, then the highest total steps/s), and seed_block follows. Every plan counts a run's time to
#   its deadline (the time left − 60 s), not to the wave's end.
# zca-cifar10, zca-cifar10-long, zca-cifar10-paper: `stabkit run studies/<phase>.toml --jobs $JOBS`
#   (default 8), stopped with SIGINT when SECONDS run out (finished cells are kept in
#   reports/<phase>/cells); the chunk that finishes the grid writes the report.
# A GPU window (≈ 15 min with the machine's start): the bench, then one ≤ 9-minute command of whole runs.
# OUTDIR is emptied before each device command and a machine left idle goes back within seconds, so the
# bench travels back and forth: copy the first command's bench_fast.json into the carried folder (it
# then reaches the second command even on a freshly started machine):
#   JOBS=6 BENCH_S=100 bash studies/gpu-session.sh "$OUT" 130 bench-fast
#   JOBS=6 FIT_HORIZON=1 BENCH_JSON=shared/data/bench_fast.json bash studies/gpu-session.sh "$OUT" S survival
# (each with STABKIT_GIT_COMMIT exported when the copy has no .git). S must end inside the device time
# that is left: the command is killed at its limit and a SIGKILL skips the state.tar.gz of the EXIT trap,
# so take S ≤ (device seconds left) − 60 s (− 180 s more if the machine must start again), at most 530
# (the state is also saved after each wave of the survival phase).
# Or both in one command of timeout_s 600 (the survival phase ends ≥ 30 s before S, the bench at BENCH_S):
#   JOBS=6 BENCH_S=100 STACK=auto SURVIVAL_SET="--set epochs=13" bash studies/gpu-session.sh "$OUT" 590 bench-fast survival
# (590 − ≈15 s decoding − ≈100 s bench − 30 s margin − 60 s deadline reserve ≈ 385 s for a wave; 13-epoch runs,
# 6 at a time, took 324 s on an H200, planned at × 1.1 = 357 s).
# Without a bench or finished runs of the study the survival phase starts nothing ("no whole wave fits").
# At exit, OUTDIR/state.tar.gz holds reports/zca-cifar10*/ with their cells; the next chunk starts
# from it when RESUME_FROM names a copy of it (e.g. beside the archive in a folder sent along).
# Environment: STABKIT_CIFAR10 (the archive; default ../shared/data/cifar10-jpeg.tar.gz),
# STABKIT_GIT_COMMIT (the commit the copy was made from; required in a copy without .git, in every
# command: the device runs each command in a fresh shell), RESUME_FROM,
# JOBS (default 8; survival and bench-fast: 6), STACK (survival), PYTHON (default python3).
set -u
out=${1:?usage: bash studies/gpu-session.sh OUTDIR SECONDS PHASE...}
budget=${2:?usage: bash studies/gpu-session.sh OUTDIR SECONDS PHASE...}
# a word would be read as a variable name by $(( )) (set -u: "unbound variable"), and a count ≤ 0 ran no phase
if [[ ! $budget =~ ^[0-9]+$ ]] || (( 10#$budget == 0 )); then
    echo "gpu-session: SECONDS must be a positive whole number of seconds, got '$budget'" >&2
    exit 2
fi
budget=$(( 10#$budget ))
shift 2
deadline=$(( $(date +%s) + budget ))
left() { echo $(( deadline - $(date +%s) )); }
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
if [[ ! -e .git && -z ${STABKIT_GIT_COMMIT:-} ]]; then
    # every run records the commit it ran: a copy without .git must be told (each command, again)
    echo "gpu-session: no .git here and STABKIT_GIT_COMMIT is not set: export STABKIT_GIT_COMMIT=<the commit this copy is of>" >&2
    exit 2
fi

save_state() {
    # the reports and their cells, whatever happened; renamed into place, so a kill mid-write leaves the last one
    tar czf "$out/state.tar.gz.part" reports/zca-cifar10* 2>/dev/null && mv -f "$out/state.tar.gz.part" "$out/state.tar.gz"
    rm -f "$out/state.tar.gz.part"
}
trap save_state EXIT
if [[ -n ${RESUME_FROM:-} ]]; then
    tar xzf "$RESUME_FROM" || exit 2
fi

needs_data=0  # the benches train on random data: only the other phases read CIFAR-10
for phase in "$@"; do [[ $phase == bench || $phase == bench-fast || $phase == profile ]] || needs_data=1; done
"$py" - "$needs_data" <<'PY' || exit 2
import sys, torch
print('torch', torch.__version__, 'GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')
if sys.argv[1] == '1':  # decode once, cached
    from stabkit.data import load_cifar10
    load_cifar10(split='train'); load_cifar10(split='test')
PY

survival() {
    local study=${SURVIVAL_STUDY:-studies/zca-cifar10-survival.toml} jobs=${JOBS:-6} bench=${BENCH_JSON:-$out/bench_fast.json}
    local margin=30 n rc stacking=() procs=${JOBS:-6} choose=
    [[ ${STACK:-} == auto ]] && choose=1
    while :; do
        local avail=$(( $(left) - margin ))
        # a wave's runs get a deadline 60 s before its end (the last test pass and the write): they have
        # avail − 60 s to finish, and with no more left, not one could start
        (( avail > 60 )) || { echo "gpu-session: survival: ${avail} s left: too little for a wave's runs to start"; break; }
        local run_time=$(( avail - 60 ))
        # plan for the horizon the runs will get: the study's, or the epochs=E of SURVIVAL_SET (a fallback's);
        # the key itself, not the end of another (extend_epochs=350 is no horizon)
        local horizon=()
        [[ " ${SURVIVAL_SET:-}" =~ [[:space:]=]epochs=([0-9.]+) ]] && horizon=(--epochs "${BASH_REMATCH[1]}")
        if [[ -n $choose ]]; then
            # the bench decides, once: runs stacked in one process, or JOBS processes — among the ways
            # that finish the most whole runs in this window (python -m stabkit.train.session --choose-stack)
            STACK=$("$py" -m stabkit.train.session "$study" --seconds "$run_time" --jobs "$jobs" --bench "$bench" ${horizon[@]+"${horizon[@]}"} --choose-stack) || return 2
            echo "gpu-session: survival: STACK=auto → $STACK"
            (( STACK > 1 )) && [[ ${SURVIVAL_SET:-} != *seed_block=* ]] && SURVIVAL_SET="${SURVIVAL_SET:-} --set seed_block=$STACK"
            choose=
        fi
        if [[ -n ${STACK:-} ]] && (( STACK > 1 )); then
            # STACK runs stacked in one process: waves of STACK runs, planned from the bench's stacked rows
            # one wave per chunk, its units side by side: the cells left of a seed block may split a wave
            # into a few stacks (e.g. 3 + 3 where a block's first seeds are done), each in its own process
            jobs=$STACK procs=$STACK stacking=(--stack "$STACK")
        fi
        if [[ -n ${RUN_S:-} ]]; then
            n=$("$py" -m stabkit.train.session "$study" --seconds "$run_time" --jobs "$jobs" --run-s "$RUN_S" ${stacking[@]+"${stacking[@]}"}) || return 2
        else
            n=$("$py" -m stabkit.train.session "$study" --seconds "$run_time" --jobs "$jobs" --bench "$bench" ${horizon[@]+"${horizon[@]}"} ${stacking[@]+"${stacking[@]}"}) || return 2
        fi
        if (( n == 0 )) && [[ -n ${FIT_HORIZON:-} && -z ${RUN_S:-} ]] && (( ${#horizon[@]} == 0 )); then
            # the study's horizon does not fit one wave: the longest whole-epoch horizon that does
            local e
            e=$("$py" -m stabkit.train.session "$study" --seconds "$run_time" --jobs "$jobs" --bench "$bench" --fit-epochs ${stacking[@]+"${stacking[@]}"}) || return 2
            if (( e > 0 )); then
                SURVIVAL_SET="${SURVIVAL_SET:-} --set epochs=$e"
                echo "gpu-session: survival: the study's horizon does not fit; running $e epoch(s) instead"
                n=$jobs
            fi
        fi
        (( n > 0 )) || { echo "gpu-session: survival: no whole wave of $jobs runs fits in ${run_time} s"; break; }
        (( ${#stacking[@]} && n > jobs )) && n=$jobs  # stacked: one wave per chunk (then planned again)
        avail=$(( $(left) - margin ))  # the planning above took a few seconds (and `timeout 0` would never stop)
        (( avail > 60 )) || { echo "gpu-session: survival: ${avail} s left: too little for a wave's runs to start"; break; }
        # each run also stops at an epoch's end when the next would pass this deadline (60 s before the
        # wave's timeout, for the last test pass and the write): if the plan was too hopeful, the runs come
        # back as shorter censored runs instead of being killed with nothing written
        # shellcheck disable=SC2086  # SURVIVAL_SET is a list of arguments
        STABKIT_RUN_DEADLINE=$(( $(date +%s) + avail - 60 )) \
        timeout -s INT -k 60 "$avail" "$py" -m stabkit run "$study" --jobs "$procs" ${stacking[@]+"${stacking[@]}"} --max-cells "$n" --no-progress --reuse-stale ${SURVIVAL_SET:-}
        rc=$?
        echo "gpu-session: survival chunk of $n run(s) exited with $rc"
        save_state  # this wave's runs come back even if a later one is killed at the device's limit
        (( rc == 0 )) || break
        # stop when the grid is done: the runner then has nothing left to start
        "$py" - "$study" ${SURVIVAL_SET:-} <<'PY'
import sys
from stabkit.studies import _grid, runner
args = sys.argv[2:]
overrides = dict(_grid.parse_override(a.removeprefix("--set=")) for a in args if a not in ("--set",))
sys.exit(0 if runner.unfinished_cells(sys.argv[1], overrides, stale="reuse") else 3)
PY
        rc=$?
        (( rc == 3 )) && { echo "gpu-session: survival: every cell of $study is finished"; break; }
        (( rc == 0 )) || { echo "gpu-session: survival: could not read which cells are left (exit $rc)"; break; }
    done
}

for phase in "$@"; do
    if (( $(left) < 30 )); then
        echo "gpu-session: out of time before phase $phase"
        break
    fi
    case $phase in
        bench)
            timeout -s INT -k 20 "$(left)" "$py" benchmarks/bench_train_step.py --device cuda --concurrency 1 4 8 --seconds 5 \
                | tee "$out/bench_train_step.md"
            timeout -s INT -k 20 "$(left)" "$py" benchmarks/bench_train_step.py --device cuda --dtype float64 \
                | tee -a "$out/bench_train_step.md" ;;
        bench-fast)
            b=${BENCH_S:-120}; (( b < $(left) )) || b=$(left)
            timeout -s INT -k 10 "$b" "$py" benchmarks/bench_train_step.py --device cuda --skip-methods --fast-path \
                --concurrency 1 "${JOBS:-6}" --interleave "${JOBS:-6}" --stacked "${JOBS:-6}" 12 --compile "${COMPILE:-reduce-overhead}" --seconds 3 \
                --json "$out/bench_fast.json" | tee "$out/bench_fast.md"
            echo "gpu-session: bench-fast exited with ${PIPESTATUS[0]} (124 = cut at ${b} s)" ;;
        profile)
            timeout -s INT -k 10 "$(( $(left) - 5 ))" "$py" benchmarks/profile_train_step.py --device cuda --out "$out"
            echo "gpu-session: profile exited with $?" ;;
        fastcheck)
            timeout -s INT -k 20 "$(( $(left) - 10 ))" "$py" -m stabkit.train.fastcheck --out "$out" --jobs "${JOBS:-8}" --device cuda ${STACK:+--stacked "$STACK"}
            echo "gpu-session: fastcheck exited with $?" ;;
        survival)
            survival ;;
        zca-cifar10|zca-cifar10-long|zca-cifar10-paper)
            timeout -s INT -k 60 "$(( $(left) - 20 ))" "$py" -m stabkit run "studies/$phase.toml" --jobs "${JOBS:-8}" --no-progress
            echo "gpu-session: $phase exited with $?  (124 = stopped at the deadline: run this phase again to resume)" ;;
        *)
            echo "gpu-session: unknown phase $phase (bench, bench-fast, profile, fastcheck, survival, zca-cifar10, zca-cifar10-long, zca-cifar10-paper)" >&2
            exit 2 ;;
    esac
done
