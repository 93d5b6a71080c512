#!/usr/bin/env bash
# One GPU check, about 8 minutes on one GPU; every number next to its baseline from the same run:
#   1. level-1 ResNet50 at 128 px, train.py's default precision (bf16 from compute capability 8, else
#      fp16), channels_last: our loop's images/s / a bare forward-backward-step loop, eager and
#      --compile, with peak GPU memory of both (bench/gpu.py)
#   2. the device-side data path (augmentation on the GPU) images/s / a per-image PIL DataLoader
#      (bench/data_pipeline.py --device cuda)
#   3. the fast recipe end to end: test accuracy / its target, training time / wall time
#   4. with two GPUs or more: the fast recipe on two processes, images/s / the one-process run's
# Usage: bench/gpu_check.sh --dataset DIR   (DIR: CIFAR-10 in the uoft-cs/cifar10 layout)
# Without a GPU it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no GPU found (torch.cuda.is_available() is False): nothing measured"
    exit 0
fi
DATASET=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dataset) DATASET="${2:-}"; shift 2 ;;
        *) echo "error: unknown argument $1; usage: bench/gpu_check.sh --dataset DIR" >&2; exit 2 ;;
    esac
done
if [ -z "$DATASET" ] || [ ! -d "$DATASET" ]; then
    echo "error: --dataset DIR: a local CIFAR-10 copy (uoft-cs/cifar10 layout) is required" >&2
    exit 2
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
COMMON=(--dataset "$DATASET" --report-to none --no-progress)

echo "== 1. level 1 (resnet50, 128 px): our loop vs a bare loop, eager and --compile, peak memory"
python bench/gpu.py --level 1 --repeats 3 --train-limit 5120 --eval-limit 1000 --dataset "$DATASET"

echo; echo "== 2. device-side data path vs a per-image PIL DataLoader"
python bench/data_pipeline.py --level 1 2 --device cuda --repeats 3 --dataset "$DATASET"

summary() {  # results.json of a run, the wall seconds it took, a label
    python - "$1" "$2" "$3" <<'PY'
import json, sys
results, wall, label = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3]
print(f"{label}: {results['hardware']}, precision {results['precision']}: test accuracy "
      f"{results['test_acc']:.2%} (target {results['target']}), training {results['train_seconds']:.0f} s "
      f"of {wall:.0f} s wall ({results['train_seconds'] / wall:.0%}), {results['images_per_s']:.0f} img/s")
PY
}

echo; echo "== 3. the fast recipe end to end, one GPU"
start=$(date +%s.%N)
python train.py --level fast "${COMMON[@]}" --output-dir "$OUT/one" > "$OUT/one.log"
wall=$(python -c "import time; print(time.time() - $start)")
ONE=$(ls "$OUT"/one/*/results.json)
summary "$ONE" "$wall" "fast recipe, 1 process"

GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
    echo; echo "== 4. the fast recipe on two GPUs (DDP) vs one"
    start=$(date +%s.%N)
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no train.py --level fast "${COMMON[@]}" --output-dir "$OUT/two" > "$OUT/two.log"
    wall=$(python -c "import time; print(time.time() - $start)")
    TWO=$(ls "$OUT"/two/*/results.json)
    summary "$TWO" "$wall" "fast recipe, 2 processes"
    python -c "import json; one, two = (json.load(open(p))['images_per_s'] for p in ('$ONE', '$TWO')); \
print(f'two processes / one: {two / one:.2f}x images/s')"
else
    echo; echo "== 4. skipped: $GPUS GPU (two-process run needs two)"
fi
