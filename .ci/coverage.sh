#!/usr/bin/env bash
# Branch coverage of fastresnet/ (coverage.py, configured in pyproject.toml) over the whole test suite, every
# subprocess included: COVERAGE_PROCESS_START starts coverage in each Python process (coverage's own .pth hook),
# the pytest process, CLI children, torchrun workers and notebook kernels alike. One test file at a time (a
# failing file is named and the rest still run); then one report, written to docs/records/coverage.txt.
# Needs `pip install coverage` (7.10 or later) and, for the full count, what CI has (root for tmpfs, Chromium).
# .ci/coverage.sh tests/test_cli.py ...: those files only (a partial count).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD COVERAGE_PROCESS_START=$PWD/pyproject.toml
export COVERAGE_FILE=${TMPDIR:-/tmp}/fastresnet-coverage/cov
rm -rf "$(dirname "$COVERAGE_FILE")" && mkdir -p "$(dirname "$COVERAGE_FILE")"
start=$(date +%s) failed=()
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(tests/test_*.py)
for f in "${files[@]}"; do
    python -m pytest -p no:cacheprovider -q "$f" >/dev/null 2>&1 || failed+=("$f")
done
python -m coverage combine -q
out=docs/records/coverage.txt
{
    commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- fastresnet tests || echo '+changes')
    version=$(python -c 'import coverage; print(coverage.__version__)')
    echo "# $(date +%Y-%m-%d) $commit; coverage $version, branch mode: .ci/coverage.sh ${*:-(all test files)}"
    echo "# $(( $(date +%s) - start )) s on $(nproc) cores; files that failed: ${failed[*]:-none}"
    python -m coverage report
} > "$out"
cat "$out"
