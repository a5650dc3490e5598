#!/usr/bin/env bash
# Every benchmark of docs/results/benchmarks.md, one after another (about 35 minutes on 2 cores).
# Run by hand from the repository root on an otherwise idle machine: ./bench/run_all.sh
# Each script writes docs/results/bench_<area>.json; logs go to $SIMSEARCH_BENCH_DIR/logs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOGS=${SIMSEARCH_BENCH_DIR:-/tmp/simsearch-bench}/logs
mkdir -p "$LOGS"
# One OpenMP thread everywhere: what `simsearch serve` and `simsearch index build` default to, and
# what the in-process references need to be comparable (2 threads were slower on 2 busy cores).
export OMP_NUM_THREADS=1
run() { local name=$1; shift; echo "== $name: $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; "$@" > "$LOGS/$name.log" 2>&1; tail -n 30 "$LOGS/$name.log"; }
run embed $PY bench/bench_embed.py
run onnx_int8 $PY bench/bench_onnx_int8.py
run decode $PY bench/bench_decode.py
run http $PY bench/bench_http.py --kinds png32,jpeg640,png32raw,jpeg640raw
run http_floor $PY bench/bench_http_floor.py
run worker_contention $PY bench/bench_worker_contention.py
run ingest $PY bench/bench_ingest.py
run memory $PY bench/bench_memory.py
run train $PY bench/bench_train.py --threads 1 --steps 40 --trainer-max-train 10000
