#!/usr/bin/env bash
# Time budget of the demo: the whole workflow with config.yaml from a fresh results folder, then the per-rule
# times from its benchmark files (markdown, slowest first). The budget is 10 minutes on 2 cores.
#   usage: benchmarks/speed/demo_time.sh [WORKDIR] [CORES]          (run from anywhere; WORKDIR must not exist yet)
#   WORKDIR defaults to a new temporary folder, removed afterwards unless KEEP=1; CORES defaults to 2.
# The run uses the repository's Snakefile and config.yaml in WORKDIR (`snakemake --directory`), so results/ there
# is fresh and the repository's own results/ is never touched. The load average before and after is printed: other
# work on the machine inflates the times.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CORES=${2:-2}
BUDGET_S=${BUDGET_S:-600}
export PATH="$REPO/.venv/bin:$PATH"   # the rules call `orl`
PY="$REPO/.venv/bin/python"

if [[ -n "${1:-}" ]]; then
    WORK=$1
    if [[ -e "$WORK" ]]; then echo "demo_time: $WORK exists; give a new folder (the run must start fresh)" >&2; exit 1; fi
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/orl-demo-time.XXXXXX")
    if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
fi
WORK=$(cd "$WORK" && pwd)

echo "demo_time: snakemake --cores $CORES in $WORK ($(nproc) CPUs on this machine)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
status=0
snakemake --snakefile "$REPO/Snakefile" --directory "$WORK" --cores "$CORES" > "$WORK/snakemake.out" 2>&1 || status=$?
wall=$(( $(date +%s) - start ))
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $status -ne 0 ]]; then
    echo "demo_time: snakemake failed ($status); the end of its output:" >&2
    tail -n 40 "$WORK/snakemake.out" >&2
    KEEP=1; trap - EXIT
    echo "demo_time: kept $WORK" >&2
    exit "$status"
fi
echo
"$PY" "$REPO/benchmarks/speed/rule_times.py" "$WORK/results/benchmarks" --wall "$wall" --cores "$CORES"
echo
if (( wall > BUDGET_S )); then
    echo "OVER BUDGET: $wall s > $BUDGET_S s"
elif (( wall * 10 > BUDGET_S * 9 )); then
    echo "within budget but close: $wall s of $BUDGET_S s"
else
    echo "within budget: $wall s of $BUDGET_S s"
fi
if [[ -n "${1:-}" || "${KEEP:-0}" == 1 ]]; then echo "run kept in $WORK"; fi
