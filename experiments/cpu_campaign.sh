#!/usr/bin/env bash
# The accuracy campaign on a CPU with bf16 units (issue 34): full-width, full-data 24-epoch runs, one at a time, in
# the order of experiments/cpu_runs.txt. Each call starts the first unfinished run, or resumes it (`--resume`) where
# an earlier session left its folder, then goes on down the list. A run's folder lives outside the repo (a session
# can end at any moment; the checkpoint of the last completed epoch survives as long as the machine does).
#
#   bash experiments/cpu_campaign.sh                  # leave the CPU to it: no tests, no benchmarks beside it
#   ONLY=default-bf16-s42 bash experiments/cpu_campaign.sh     # one run of the list
#
# When a run finishes, its small files (never the checkpoint or the exported model) go to docs/runs/NAME/ with
# cpu.txt (the CPU of every start and resume), the table in docs/experiments.md is regenerated
# (experiments/campaign_table.py) and both are committed (COMMIT=0: copy and regenerate only).
# Settings: DATA (the lossless official copy), CAMPAIGN (the run folders), RUNS (the list).
set -uo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-$(realpath -m ../shared/data/cifar10-official/cifar-10-batches-py)}
campaign=${CAMPAIGN:-$HOME/fastresnet-campaign}; runs=${RUNS:-experiments/cpu_runs.txt}
small=(settings.ini run.json lr_bounds.json lr_find.json metrics.json final.json)  # what docs/runs/NAME keeps
say() { echo "[$(date '+%F %T')] $*"; }

# bf16 without the units is 12-13x slower than fp32 (docs/benchmarks.md, Zen 3): a 24-epoch run would take days
cpuinfo=${CPUINFO:-/proc/cpuinfo}  # another file only in the script's own test
if ! grep -qE 'avx512_bf16|amx_bf16' "$cpuinfo"; then
    echo "cpu_campaign: this CPU ($(lscpu | sed -n 's/^Model name: *//p')) has no bf16 units (neither avx512_bf16" \
         "nor amx_bf16 in $cpuinfo), where a bf16 run is 12-13x slower than fp32. Run the campaign on a CPU" \
         "that has them, or on a lent GPU (experiments/gpu_agenda.sh); do other work this session." >&2
    exit 2
fi
[ -d "$data" ] || { echo "cpu_campaign: no data at $data: set DATA to the cifar-10-batches-py folder." >&2; exit 2; }
mkdir -p "$campaign"

lr_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['lr_max'])" "docs/runs/$1/lr_bounds.json"; }

collect() {  # a finished run's small files into docs/runs/NAME, the table regenerated, both committed
    local name=$1 dir=$campaign/$1
    mkdir -p "docs/runs/$name"
    for f in "${small[@]}"; do [ -f "$dir/$f" ] && cp "$dir/$f" "docs/runs/$name/"; done
    [ -f "$campaign/$name.cpu" ] && cp "$campaign/$name.cpu" "docs/runs/$name/cpu.txt"
    python3 experiments/campaign_table.py docs/runs --into docs/experiments.md --figure docs/figures/campaign.png ||
        { say "$name: the table could not be regenerated (above); its files are in docs/runs/$name"; return 1; }
    say "$name finished: $(cat "docs/runs/$name/final.json" | tr -d '\n ')"
    local pixels="official data"; grep -q '"data": ".*cifar10-jpeg' "docs/runs/$name/run.json" && pixels="JPEG copy"
    if [ "${COMMIT:-1}" = 1 ]; then
        git add "docs/runs/$name" docs/experiments.md docs/figures/campaign.png &&
            git commit -q -m "docs/runs/$name: a finished campaign run (bf16, $pixels); table regenerated" \
                -- "docs/runs/$name" docs/experiments.md docs/figures/campaign.png && say "committed docs/runs/$name"
    fi
}

while read -r name flags; do
    case "$name" in ""|\#*) continue ;; esac
    [ -n "${ONLY:-}" ] && [ "$name" != "$ONLY" ] && continue
    if [ -f "docs/runs/$name/final.json" ]; then                 # finished and collected (and committed)
        [ "${COMMIT:-1}" = 1 ] && ! git ls-files --error-unmatch "docs/runs/$name/final.json" >/dev/null 2>&1 ||
            continue
    fi
    dir=$campaign/$name
    if [ -f "$dir/final.json" ]; then collect "$name" || exit 1; continue; fi  # finished with nobody to collect it
    if [[ $flags =~ --lr-max\ @([^ ]+) ]]; then                # LRMAX from an earlier run's range test, if it has one
        src=${BASH_REMATCH[1]}
        if [ -f "docs/runs/$src/lr_bounds.json" ]; then flags=${flags/@$src/$(lr_of "$src")}
        else say "$name: $src has no range test yet; this run does its own"; flags=${flags/--lr-max @$src/}; fi
    fi
    cpu="$(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu |
        sed -n 's/^Model: *//p'), $(nproc) cores ($(grep -oE 'amx_bf16|avx512_bf16' "$cpuinfo" | sort -u | xargs))"
    if [ -f "$dir/run.json" ]; then
        say "$name: resuming $dir"; echo "$(date '+%F %T') resume $cpu" >>"$campaign/$name.cpu"
        cmd=(fastresnet train --resume "$dir")
    else
        # shellcheck disable=SC2206  # the flags are words
        cmd=(fastresnet train --data "$data" --precision bf16 --out "$dir" $flags)
        say "$name: ${cmd[*]}"; echo "$(date '+%F %T') start $cpu" >>"$campaign/$name.cpu"
    fi
    "${cmd[@]}" </dev/null 2>&1 | tee -a "$campaign/$name.log"          # one line an epoch: `epoch 3/24 ...`
    if [ -f "$dir/final.json" ]; then collect "$name" || exit 1
    else say "$name stopped before it finished (see $campaign/$name.log); the next call resumes it"; exit 1; fi
done <"$runs"
say "no unfinished run left in $runs"
