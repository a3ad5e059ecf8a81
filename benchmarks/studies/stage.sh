# Sourced by the benchmarks/studies/*_coco128.sh scripts (needs $PY): run a pipeline stage.
# `orl <stage>` once the stage is registered in orl.cli; the same add_arguments/run pair directly otherwise.
stage() {
    local name=$1 module=$2; shift 2
    if "$PY" -m orl.cli "$name" --help >/dev/null 2>&1; then
        "$PY" -m orl.cli "$name" "$@"
    else
        "$PY" -c 'import argparse, importlib, sys
m = importlib.import_module(sys.argv[1]); p = argparse.ArgumentParser(prog=sys.argv[1]); m.add_arguments(p)
m.run(p.parse_args(sys.argv[2:]))' "$module" "$@"
    fi
}
