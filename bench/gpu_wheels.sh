#!/bin/sh
# Here, where pip reaches the registry: what bench/gpu_suite.sh needs on the GPU machine (Python
# 3.12 with PyTorch, numpy and common packages; no network there), into .whl/ (ignored by git;
# carried: device run with carry [".whl"]). ~30 MB:
#   - wheels (cp312, manylinux x86-64) of the serve extra's needs other than torch, onnx*,
#     scikit-learn and ezkl (serving imports none of them but torch), pinned to this venv's
#     versions (the tested ones) where it has them;
#   - verinfer's own wheel (its entry points: `verinfer serve`);
#   - this machine's wrk and its libluajit (run there with LD_LIBRARY_PATH; the suite falls back
#     to Python load processes if it does not run);
#   - granian (the bench extra: HTTP_SERVERS=1 of bench/gpu_suite.sh).
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}  # the GPU machine's Python
rm -rf .whl && mkdir -p .whl/bin .whl/lib
$PY -m pip freeze --exclude-editable | grep '==' >.whl/constraints.txt
$PY -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp$(echo "$PYVER" | tr -d .)" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -c .whl/constraints.txt -d .whl \
    "pydantic>=2.7,<3" "pydantic-settings>=2.3,<3" "cryptography>=42" "rfc8785>=0.1.4" "eth-account>=0.13" \
    "fastapi>=0.110" "uvicorn[standard]>=0.29" "coincurve>=20" "pynacl>=1.5" "safe-pysha3>=1.0.4" \
    "prometheus-client>=0.20" "orjson>=3.10" "fastapi-offline>=1.7.7" "granian==2.8.9"
$PY -m pip wheel -q --no-deps --no-build-isolation -w .whl .
rm .whl/constraints.txt
if command -v wrk >/dev/null; then
    cp "$(command -v wrk)" .whl/bin/
    ldd "$(command -v wrk)" | awk '/libluajit/ {print $3}' | xargs -r -I{} cp {} .whl/lib/
fi
du -sh .whl
