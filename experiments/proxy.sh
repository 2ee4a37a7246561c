#!/usr/bin/env bash
# CPU proxy of the full recipe: the whole 24-epoch schedule at batch 512, evaluated on the full
# 10,000-image test set, made cheaper in one of two ways. Prints a row for docs/experiments.md.
#
#   experiments/proxy.sh NAME [fastresnet train flags...]
#   SUBSET=2500 (default)  a class-balanced training subset, full width
#   SUBSET=0 WIDTH=0.25    all 50,000 training images, every channel count x WIDTH (arithmetic x WIDTH²)
#   DATA=../shared/data/cifar10-jpeg SUBSET=0 WIDTH=0.5 experiments/proxy.sh wd0.4 --wd 0.4
#
# Subset proxies take fewer steps than the full run (120 against 2,352), so a full-run decay needs
# --wd <that decay × 19.6> (× 9.8 with SUBSET=5000); docs/experiments.md §2 explains why. Width
# proxies take the full run's steps, schedule and decay unchanged. Cost on 2 CPU cores: a width-0.25
# run ~0.4 h, width 0.5 ~1.5 h (experiments/width_cost.py). Continue an interrupted proxy with
# `fastresnet train --resume OUT/NAME`.
set -euo pipefail
name=$1; shift
data=${DATA:-../shared/data/cifar10-jpeg}
subset=${SUBSET:-2500}
width=${WIDTH:-1}
out=${OUT:-runs/proxy}/$name
cut=(); [ "$subset" != 0 ] && cut+=(--subset "$subset"); [ "$width" != 1 ] && cut+=(--width "$width")
start=$(date +%s)
fastresnet train --data "$data" "${cut[@]}" --out "$out" "$@"
secs=$(( $(date +%s) - start ))
python - "$out" "$secs" "${cut[*]} $*" <<'PY'
import json, sys
out, secs, flags = sys.argv[1:]
f = json.load(open(f"{out}/final.json")); b = json.load(open(f"{out}/lr_bounds.json"))
h = json.load(open(f"{out}/metrics.json"))
print(f"| {out.split('/')[-1]} | `{flags.strip()}` | {len(h)} | {b['lr_min']:.3g} / {b['lr_max']:.3g} | "
      f"{h[-1]['train_loss']:.3f} | {f['accuracy']:.4f} | {f.get('accuracy_tta', float('nan')):.4f} | {int(secs) // 60} min |")
PY
