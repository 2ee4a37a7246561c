#!/usr/bin/env bash
# The floors pyproject.toml declares, installed and run: a fresh venv gets every runtime dependency at exactly its
# declared lowest version (torch and torchvision aside: this workplace has only torch 2.14.1 / torchvision 0.29.1 on
# disk, so those two are that build, whatever their floors say), then the bare-install smoke path of .ci/run.
# Its output is docs/records/floors.txt.   bash .ci/floors.sh > docs/records/floors.txt
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install -q --upgrade pip 2>/dev/null
python - > "$work/floors.txt" <<'PY'
import re, tomllib
for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name, floor = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", req).groups()  # every dependency has a floor
    print({"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}.get(name, f"{name}=={floor}"))
PY
echo "# $(date -u +%F) main $(git rev-parse --short HEAD); Python $(python -c 'import platform; print(platform.python_version())');" \
     "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "# installed at the declared floors (pip constraints):"
sed 's/^/#   /' "$work/floors.txt"
python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>/dev/null
python -m pip install -q -c "$work/floors.txt" . 2>/dev/null
python -m pip list --format=freeze 2>/dev/null | grep -iE "^($(sed 's/==.*//' "$work/floors.txt" | paste -sd'|'))==" \
    | sed 's/^/# got: /'
cd "$work"
python "$ROOT/.ci/tiny_data.py" tiny
start=$(date +%s)
fastresnet train --data tiny --epochs 2 --bs 64 2>&1 | grep -vE "^  range test: batch"
model=$(ls runs/*/model.pkl)
fastresnet predict tiny/test/cat/0000.png --model "$model"
fastresnet predict tiny/test --model "${model%.pkl}.safetensors" --csv predictions.csv && wc -l < predictions.csv
python -c "from fastai.learner import load_learner; print('load_learner().predict:', load_learner('$model').predict('tiny/test/cat/0000.png')[0])" 2>&1 | grep -v "insecure pickle\|Learner.load\|warn("
echo "floors smoke run: $(( $(date +%s) - start )) s: passed"
