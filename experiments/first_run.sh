#!/usr/bin/env bash
# The README's first command as a new user runs it, with a cold decode cache, timed; its output is the record the
# README quotes (docs/records/first-run.txt, checked by experiments/doc_figures.py). Needs CIFAR-10 where fastai puts
# it (~/.fastai/data/cifar10) and an idle machine.   bash experiments/first_run.sh > docs/records/first-run.txt
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "# $(date -u +%F) main $(git -C "$(dirname "$0")" rev-parse --short HEAD); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
     "family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs)," \
     "$(nproc) cores ($(grep -oE 'amx_bf16|avx512_bf16' /proc/cpuinfo | sort -u | xargs)); load before: $(cut -d' ' -f1 /proc/loadavg)"
echo "\$ fastresnet train --subset 2000 --epochs 2 --width 0.25 --out runs/first   # cold cache: FASTRESNET_CACHE=$work/cache"
cd "$work"
start=$(date +%s)
FASTRESNET_CACHE="$work/cache" fastresnet train --subset 2000 --epochs 2 --width 0.25 --out runs/first 2>&1
echo "wall: $(( $(date +%s) - start )) s"
