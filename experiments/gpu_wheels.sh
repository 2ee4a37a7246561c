#!/usr/bin/env bash
# The packages fastresnet needs on the lent GPU machine beyond what its image holds (torch, torchvision,
# numpy, matplotlib, pandas, requests, rich, ... are there; fastai and fastprogress's web stack are not),
# as wheels in .gpu-wheels/ (git-ignored; carry it with the device tool). Versions: this machine's.
set -euo pipefail
rm -rf .gpu-wheels && mkdir .gpu-wheels
# fastai's dependencies (spacy aside: fastai.text only) that the device image lacks (its list: the device tool's KINDS.md)
pkgs=(fastai fastcore fastprogress fastdownload fasttransform plum-dispatch beartype python-fasthtml starlette
      uvicorn oauthlib itsdangerous python-multipart beautifulsoup4 soupsieve httpx2 httpcore2 truststore)
pins=()
for p in "${pkgs[@]}"; do v=$(python -m pip show "$p" 2>/dev/null | awk '/^Version:/{print $2}'); pins+=("$p${v:+==$v}"); done
python -m pip download -q --no-deps -d .gpu-wheels --python-version 3.12 --only-binary=:all: "${pins[@]}"
du -sh .gpu-wheels
