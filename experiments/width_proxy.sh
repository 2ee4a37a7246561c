#!/usr/bin/env bash
# CPU proxy of the full recipe at reduced width: all 50,000 training images, the whole 24-epoch
# schedule at batch 512, every channel count multiplied by WIDTH (arithmetic scales with WIDTH²),
# evaluated on the full 10,000-image test set. Prints a row for docs/experiments.md.
#
#   experiments/width_proxy.sh NAME [fastresnet train flags...]
#   WIDTH=0.5 DATA=../shared/data/cifar10-jpeg experiments/width_proxy.sh wd0.4 --wd 0.4
#
# Unlike the subset proxy, nothing needs rescaling: the steps, the schedule and the decay are the
# full run's. Cost on 2 CPU cores: ~0.4 h at width 0.25, ~1.5 h at 0.5 (experiments/width_cost.py).
# Continue an interrupted one with `fastresnet train --resume OUT/NAME`.
set -euo pipefail
name=$1; shift
data=${DATA:-../shared/data/cifar10-jpeg}
width=${WIDTH:-0.25}
out=${OUT:-runs/width}/$name
start=$(date +%s)
fastresnet train --data "$data" --out "$out" --set width="$width" "$@"
secs=$(( $(date +%s) - start ))
python - "$out" "$secs" "$width" "$*" <<'PY'
import json, sys
out, secs, width, flags = sys.argv[1:]
f = json.load(open(f"{out}/final.json")); b = json.load(open(f"{out}/lr_bounds.json"))
h = json.load(open(f"{out}/metrics.json"))
print(f"| {out.split('/')[-1]} | width {width} `{flags}` | {b['lr_min']:.3g} / {b['lr_max']:.3g} | "
      f"{h[-1]['train_accuracy']:.4f} | {f['accuracy']:.4f} | {f.get('accuracy_tta', float('nan')):.4f} | {int(secs) // 60} min |")
PY
