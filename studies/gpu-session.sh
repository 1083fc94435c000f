#!/usr/bin/env bash
# The GPU work of the training studies, in time-boxed chunks that resume where the last one stopped:
# for a GPU machine that gets a copy of this checkout (no `pip install`, maybe no .git) and gives back
# only what one folder holds.
#
#   bash studies/gpu-session.sh OUTDIR SECONDS PHASE...     PHASE: bench | zca-cifar10 | zca-cifar10-long | zca-cifar10-paper
#
# bench: benchmarks/bench_train_step.py --device cuda (float32 with the throughput of 1, 4, 8
#   concurrent processes — choose JOBS from it —, then float64) → OUTDIR/bench_train_step.md.
# zca-cifar10, zca-cifar10-long: `stabkit run studies/<phase>.toml --jobs $JOBS` (default 8), stopped
#   with SIGINT when SECONDS run out (finished cells are kept in reports/<phase>/cells); the chunk
#   that finishes the grid writes the report, with the command, machine, GPU and the summed time.
# At exit, OUTDIR/state.tar.gz holds reports/zca-cifar10*/ with their cells; the next chunk starts
# from it when RESUME_FROM names a copy of it (e.g. beside the archive in a folder sent along).
# Environment: STABKIT_CIFAR10 (the archive; default ../shared/data/cifar10-jpeg.tar.gz),
# STABKIT_GIT_COMMIT (the commit the copy was made from, for a copy without .git), RESUME_FROM,
# JOBS (default 8), PYTHON (default python3).
set -u
out=${1:?usage: bash studies/gpu-session.sh OUTDIR SECONDS PHASE...}
budget=${2:?usage: bash studies/gpu-session.sh OUTDIR SECONDS PHASE...}
shift 2
deadline=$(( $(date +%s) + budget ))
left() { echo $(( deadline - $(date +%s) )); }
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"

save_state() {
    # the reports and their cells, whatever happened
    tar czf "$out/state.tar.gz" reports/zca-cifar10* 2>/dev/null || true
}
trap save_state EXIT
if [[ -n ${RESUME_FROM:-} ]]; then
    tar xzf "$RESUME_FROM" || exit 2
fi

"$py" -c "from stabkit.data import load_cifar10 as l; l(split='train'); l(split='test')" || exit 2  # decode once, cached
"$py" -c "import torch; print('torch', torch.__version__, 'GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"

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
        zca-cifar10|zca-cifar10-long|zca-cifar10-paper)
            timeout -s INT -k 60 "$(( $(left) - 20 ))" "$py" -m cli.main run "studies/$phase.toml" --jobs "${JOBS:-8}" --no-progress
            echo "gpu-session: $phase exited with $?  (124 = stopped at the deadline: run this phase again to resume)" ;;
        *)
            echo "gpu-session: unknown phase $phase (bench, zca-cifar10, zca-cifar10-long, zca-cifar10-paper)" >&2
            exit 2 ;;
    esac
done
