#!/usr/bin/env bash
# Everything one lent GPU should measure, in one call of at most 10 minutes (the device tool's `run`):
#   1. with LADDER=1 only (the speed issue is closed; accuracy runs need the minutes): the speed ladder fp32 /
#      TF32 / bf16 / +channels_last / +compile / +CUDA graphs, with the matmul peak and a torch.profiler summary
#      of one epoch (benchmarks/bench_gpu.py)                                       -> $OUT/ladder.json
#   2. full-data runs side by side on the one GPU: every line of RUNS (experiments/gpu_runs.txt: a name and
#      `fastresnet train` flags), N at a time                                        -> $OUT/runs.json
# with the device, the commands and the log in $OUT/agenda.log. At most 8 files come back from $OUT.
#
# Prepare here (the device has torch but not fastai, cannot download, and takes at most 64 MiB along):
#   experiments/gpu_wheels.sh                                                  # 3 MiB of wheels -> .gpu-wheels/
#   python experiments/pack_cifar.py pack ../shared/data/cifar10-jpeg .gpu-data.npz   # 60,000 JPEGs in 54 MiB
# On the device (the device tool's `run`, carry [".gpu-wheels", ".gpu-data.npz"], timeout 600):
#   bash experiments/gpu_agenda.sh .gpu-data.npz "$OUT"
# Back here: commit $OUT's files under docs/gpu/ (device named), then the tables and the epoch-budget figure:
#   python experiments/full_data_summary.py docs/gpu/FILE.json --by name --epochs-out docs/figures/epoch_budget.png
# Dry run on this CPU (a few batches a rung, two tiny runs; checks the script and the figures it prints):
#   DRY=1 bash experiments/gpu_agenda.sh ../shared/data/cifar10-jpeg /tmp/agenda
set -uo pipefail
data=$1; out=$2; runs=${RUNS:-experiments/gpu_runs.txt}; parallel=${PARALLEL:-8}
deadline=$(( $(date +%s) + ${BUDGET_S:-570} ))  # the tool stops a call at 600 s: leave time to collect
mkdir -p "$out"
log="$out/agenda.log"
say() { echo "[$(date +%T)] $*" | tee -a "$log"; }

if [ -d .gpu-wheels ] && ! python3 -c "import fastai" 2>/dev/null; then
    say "installing fastai and its packages from .gpu-wheels (no network there)"
    python3 -m pip install -q --no-index --no-deps .gpu-wheels/*.whl >>"$log" 2>&1 || say "wheel install failed"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$log" 2>&1 || export PYTHONPATH=$PWD
if [ "${data##*.}" = npz ]; then  # packed image files: unpack them, then decode once into fastresnet's cache
    python3 experiments/pack_cifar.py unpack "$data" /tmp/cifar10 >>"$log" 2>&1 && data=/tmp/cifar10
fi
python3 -c "from fastresnet.data import load_arrays; print(load_arrays('$data'))" 2>&1 | tee -a "$log"
python3 -c "import torch, fastai; print('torch', torch.__version__, 'fastai', fastai.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log" 2>&1

if [ "${DRY:-0}" = 1 ]; then
    ladder=(--device cpu --subset 1000 --epochs 2 --bs 100 --rungs fp32,bf16,bf16+cl)
    train=(--subset 500 --epochs 2 --bs 100 --lr-find-iters 10 --width 0.25 --valid-every 0); parallel=2
else
    ladder=(--epochs 3); train=()
fi

if [ "${LADDER:-0}" = 1 ]; then
    say "1. speed ladder"
    python3 benchmarks/bench_gpu.py --data "$data" "${ladder[@]}" --profile --json "$out/ladder.json" 2>&1 | tee -a "$log"
fi

say "2. full-data runs, $parallel at a time, from $runs"
mkdir -p "$out/runs"
n=0
while read -r name flags; do
    case "$name" in ""|\#*) continue ;; esac
    if [ "${DRY:-0}" = 1 ]; then  # two runs, without the six multi-crop passes over 10,000 test images (minutes here)
        [ "$n" -ge 2 ] && break
        flags=${flags//--tta-crops/}
    fi
    # shellcheck disable=SC2086  # the flags are words
    left=$(( deadline - $(date +%s) - 20 ))
    [ "$left" -gt 60 ] || { say "no time left for $name"; continue; }
    timeout -s TERM "$left" python3 -m fastresnet.cli train --data "$data" --out "$out/runs/$name" "${train[@]}" $flags \
        >"$out/runs/$name.log" 2>&1 &
    n=$((n + 1))
    if [ $((n % parallel)) = 0 ]; then wait; fi
done <"$runs"
wait
python3 experiments/collect_runs.py "$out/runs" --device "$(python3 -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")')" \
    --out "$out/runs.json" 2>&1 | tee -a "$log"
python3 experiments/full_data_summary.py "$out/runs.json" --by name --out "$out/runs.png" \
    --epochs-out "$out/epoch_budget.png" 2>&1 | tee -a "$log"
tail -n 3 "$out"/runs/*.log >>"$log" 2>&1
rm -rf "$out/runs"  # run folders are large; runs.json keeps what the docs need (unfinished runs: their curves so far)
say "done"
