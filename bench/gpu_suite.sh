#!/bin/sh
# The GPU benchmark of `verinfer serve --workers N` in one command (docs/server.md), for the
# 16-core H200 machine: after bench/gpu_wheels.sh here, from the repository root there
#     sh bench/gpu_suite.sh            (device run with carry [".whl"]; figures into $OUT)
# 1. requests/s with receipts, one sample a JSON request, N = 1, 2, 4, 8, 14 server processes
#    (wrk if it runs there, else Python load processes), interleaved rounds, ratios to N=1;
# 2. inputs/s with receipts, 256 rows a request with binary tensor data, N = 1 and 8,
#    --max-batch-size 4096 (Python load processes: wrk's script sends text bodies).
# ~3-4 minutes. QUICK=1: N = 1 and 2, 1-second points (a dry run on any machine).
# HTTP_SERVERS=1: then also bench/http_servers.py (uvicorn against granian, N = 1, 2, 4, 8; ~2 min).
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/verinfer-site .whl/*.whl
    export PYTHONPATH="/tmp/verinfer-site${PYTHONPATH:+:$PYTHONPATH}"
    if [ -x .whl/bin/wrk ]; then
        export PATH="$PWD/.whl/bin:$PATH" LD_LIBRARY_PATH="$PWD/.whl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
fi
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
$PY -c 'import os, torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", os.cpu_count(), "cpus")'
if wrk -v 2>&1 | grep -q '^wrk'; then
    CLIENT="--client wrk --wrk-threads 8"
else
    CLIENT="--client procs --load-procs 6"
fi
if [ "${QUICK:-0}" = 1 ]; then
    N="1 2" NB="1 2" TIMES="--rounds 1 --duration 1 --warmup 0.5" C=32 CB=8
else
    N="1 2 4 8 14" NB="1 8" TIMES="--rounds 2 --duration 3 --warmup 1" C=256 CB=64
fi
# shellcheck disable=SC2086
$PY -m bench.workers --only receipts --workers $N $TIMES --concurrency $C $CLIENT \
    --out "$OUTDIR/gpu_suite-single.json"
# shellcheck disable=SC2086
$PY -m bench.workers --only receipts --workers $NB $TIMES --concurrency $CB --client procs --load-procs 4 \
    --rows 256 --binary --serve-args "--max-batch-size 4096" --out "$OUTDIR/gpu_suite-binary256.json"
if [ "${HTTP_SERVERS:-0}" = 1 ]; then
    if [ "${QUICK:-0}" = 1 ]; then NS="1 2"; else NS="1 2 4 8"; fi
    # shellcheck disable=SC2086
    $PY -m bench.http_servers --workers $NS $TIMES --concurrency $C $CLIENT --out "$OUTDIR/gpu_suite-http_servers.json"
fi
