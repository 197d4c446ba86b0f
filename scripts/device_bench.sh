#!/usr/bin/env bash
# The GPU rows of docs/performance.md in one call on a lent device machine (H100/H200), e.g.
#   run(command="scripts/device_bench.sh", timeout_s=540)
# That machine's python3 already has torch, torchvision, numba and scipy, and installs nothing, so this
# runs the bench directly instead of `make bench` (whose install step pins this project's torch). The
# results come back under $OUT: copy engine.json to bench/results/ and performance.md to docs/.
# Not yet run on a GPU: no device was lent to the session that wrote it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/device.txt"
python3 -c "import torch, numba, scipy; print('torch', torch.__version__, 'numba', numba.__version__, 'scipy', scipy.__version__)" \
    2>&1 | tee -a "$out/device.txt"
BENCH=${BENCH:-full} python3 -m bench.engine_bench 2>&1 | tee "$out/bench.log"
status=${PIPESTATUS[0]}
cp bench/results/engine.json docs/performance.md "$out/" 2>/dev/null
exit "$status"
