#!/usr/bin/env bash
# One-shot GPU check (issue 18 item 4), at most 7.5 minutes (timeouts per part) on an H100/H200: the CUDA test modules (no host
# synchronisation per training step for every trainer, fp16 amp with GradScaler, bf16, SyncBatchNorm and a one-process
# NCCL data-parallel run), the real-architecture tests on torchvision's resnet18 and timm's vit_tiny_patch16_224, and
# the GPU benchmark (VGG-16 width 1, 32x32x3, batch 256: ms/sample and images/s of plain training, every method and
# ART's AdversarialTrainer; peak CUDA memory). Everything it writes goes under $OUT (default
# benchmarks/results/device/).
#
# The GPU machine has CUDA torch, torchvision, timm and transformers but neither ART nor this package, and no network.
# Prepare the wheels here first (git-ignored .whl/), then run the script there with .whl carried:
#
#     bash benchmarks/device_check.sh --prepare      # here: ART and art_latent wheels into .whl/
#     bash benchmarks/device_check.sh                # on the GPU machine
#
# Without CUDA it stops at once with exit status 3 and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="${WHEELS:-.whl}"
ART_VERSION="1.20.1"

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/art_latent-*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "adversarial-robustness-toolbox==$ART_VERSION"
    python3 -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" .
    ls -l "$WHEELS"
    exit 0
fi

OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
    echo "device_check: no CUDA device here (torch.cuda.is_available() is False, or torch is missing): nothing was" \
         "checked. Run it on the GPU machine." >&2
    exit 3
fi
if ! "$PYTHON" -c "import art, art_latent" 2>/dev/null; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "device_check: ART or art_latent is missing and $WHEELS/ holds no" \
        "wheels: run 'bash benchmarks/device_check.sh --prepare' where pip works and carry $WHEELS." >&2; exit 4; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/art_latent_site \
        "$WHEELS"/*.whl || exit 4
    export PYTHONPATH="/tmp/art_latent_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
status=0
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PYTHON" -c "import torch, art, art_latent; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'device', torch.cuda.get_device_name(), 'ART', art.__version__, 'art_latent', art_latent.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# The CUDA test modules and the real architectures (JUnit XML for the record), at most 2.5 minutes.
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda_sync.py tests/test_gpu_models.py \
    --junitxml="$OUT/cuda-tests.xml" 2>&1 | tee "$OUT/cuda-tests.log" || status=1

# The GPU benchmark: every method's time (at most 3 minutes), then the peak CUDA memory of the main ones (each in a
# fresh process; at most 2 minutes). Each part writes its own JSON, so a timeout in one keeps the other.
GPU_ARGS=(--device cuda --width 1 --size 32 --channels 3 --batch-size 256)
timeout 180 "$PYTHON" benchmarks/run.py "${GPU_ARGS[@]}" --repeats 3 --no-memory \
    --json "$OUT/gpu-vgg16w1-b256.json" 2>&1 | tee "$OUT/gpu-benchmark.txt" || status=1
timeout 120 "$PYTHON" benchmarks/run.py "${GPU_ARGS[@]}" --repeats 1 --steps 2 \
    --methods plain art_adversarial_fgsm hldr_precomputed hldr_online_fgsm afd \
    --json "$OUT/gpu-vgg16w1-b256-memory.json" 2>&1 | tee "$OUT/gpu-memory.txt" || status=1
echo "device_check: exit status $status (0: every test passed and the benchmark ran)"
exit $status
