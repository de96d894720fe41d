#!/bin/bash
# The GPU checks in one go, on a machine with CUDA (at most 7 min 50 s: each step has a limit): the tests marked
# `cuda`, then the occlusion, gradients, topk and featvis benchmarks on the GPU. Each step has its
# own time limit, so one slow step cannot eat the others'. Tables and logs go to $OUT (the device
# tool's folder) or ./gpu-check.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with cnnviz installed
set -u
cd "$(dirname "$0")/.."
DEST=${OUT:-gpu-check}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 CNNVIZ_CACHE_DIR=off
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')" || exit 2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, torchvision, cnnviz; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cnnviz', cnnviz.__version__)"
  nproc; } > "$DEST/machine.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $DEST/NAME.log, say how it ended
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (time limit)')" | tee -a "$DEST/summary.txt"
}

step tests 120 python -m pytest -q -m cuda tests/test_cuda.py
step occlusion 170 python benchmarks/occlusion.py --device cuda --modes full,incremental \
    --models efficientnet_lite0:8,alexnet:8,resnet18:8,vgg16:8 --batch-sizes 16,64,256 \
    --perturbations 16,64,256 --repeats 3 --budget 120 --out "$DEST/occlusion.md"
step gradients 60 python benchmarks/gradients.py --device cuda --images 16 --repeats 3
step topk 60 python benchmarks/topk.py --device cuda --images 200 --repeats 2
step featvis 60 python benchmarks/featvis.py --device cuda --budgets ""
cat "$DEST/summary.txt"
