#!/usr/bin/env bash
# CPU proxy of the full recipe: the whole 24-epoch schedule at batch 512 on a class-balanced
# training subset, evaluated on the full 10,000-image test set. Prints a row for docs/experiments.md.
#
#   experiments/proxy.sh NAME [fastresnet train flags...]
#   DATA=../shared/data/cifar10-jpeg SUBSET=2500 experiments/proxy.sh rule-minimum --seed 1
#
# Weight decay: the proxy takes 120 steps against the full run's 2,352, so to test a full-run decay
# pass --set wd=<that decay × 19.6> (× 9.8 with SUBSET=5000); docs/experiments.md §2 explains why.
set -euo pipefail
name=$1; shift
data=${DATA:-../shared/data/cifar10-jpeg}
subset=${SUBSET:-2500}
out=${OUT:-runs/proxy}/$name
start=$(date +%s)
fastresnet train --data "$data" --subset "$subset" --out "$out" --overwrite --set tta=true "$@"
secs=$(( $(date +%s) - start ))
python - "$out" "$secs" "$subset" "$*" <<'PY'
import json, sys
out, secs, subset, flags = sys.argv[1:]
f = json.load(open(f"{out}/final.json")); b = json.load(open(f"{out}/lr_bounds.json"))
h = json.load(open(f"{out}/metrics.json"))
print(f"| {out.split('/')[-1]} | `--subset {subset} {flags}` | {len(h)} | {b['lr_min']:.3g} / {b['lr_max']:.3g} | "
      f"{h[-1]['train_loss']:.3f} | {f['accuracy']:.4f} | {f.get('accuracy_tta', float('nan')):.4f} | {int(secs) // 60} min |")
PY
