#!/usr/bin/env bash
# The main job: install hcast, then on Fashion-MNIST (offline, no model hub)
#   1. fine-tune hcast_tiny from scratch (10 garments -> 5 groups),
#   2. evaluate it on the 10,000-image test split (per-level accuracy, FPA, TICE),
#   3. reload the saved folder through timm.create_model("local-dir:..."),
#   4. predict a few test images, and draw a segmentation picture.
#
#   bash scripts/main_job.sh                      # CPU (2 cores: ~10 minutes of training)
#   bash scripts/main_job.sh --device cuda        # extra arguments go to `hcast finetune`
#   OUT=/tmp/fmnist bash scripts/main_job.sh      # output folder (default runs/main_job)
#   bash scripts/main_job.sh --model hier_vit_tiny --model-kwargs img_size=64 patch_size=8
#                                                 # the Hier-ViT baseline, same recipe and budget
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-runs/main_job}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1        # nothing is downloaded from a model hub
export MPLBACKEND=Agg

echo "== install"
# Fashion-MNIST from Debian when we may install it; otherwise hcast falls back to torchvision's download.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
        || echo "dataset-fashion-mnist not installed; torchvision will download Fashion-MNIST"
fi
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$PY" -m pip install -q -e ".[train,seeds]"
"$PY" -c "import hcast, torch; print(f'hcast {hcast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads')"

# The main job's settings are the `fashion-mnist` recipe (hcast/train/recipes.py, docs/training.md#the-main-job):
# hcast_tiny from scratch, 18,000 training / 500 validation images, 2 epochs, batch 64, peak LR 6e-4 (at 2e-3
# this from-scratch run learned slower and landed at 76-79% FPA instead of 82-83%), SEEDS (49) cached once,
# flip-only augmentation. --time-budget is a safety net on slower machines: it shortens the cosine to fit.
# `hcast finetune --recipe fashion-mnist --print-config` shows every value; extra arguments override them.
THREADS=${THREADS:-$(nproc)}
TIME_BUDGET=${TIME_BUDGET:-9}
if [ "$TIME_BUDGET" = 0 ]; then TIME_BUDGET=none; fi   # TIME_BUDGET=0: no time limit
mkdir -p "$OUT"
echo "== 1. fine-tune on Fashion-MNIST (hcast_tiny unless --model says otherwise)"
T0=$(date +%s)
hcast finetune --recipe fashion-mnist --data fashion-mnist --output "$OUT/model" \
    --threads "$THREADS" --workers "$THREADS" --time-budget "$TIME_BUDGET" --no-progress "$@"
TRAIN_S=$(( $(date +%s) - T0 ))

echo "== 2. evaluate on the Fashion-MNIST test split (10,000 images)"
DEVICE_ARGS=()
for ((i = 1; i <= $#; i++)); do
    if [ "${!i}" = "--device" ]; then j=$((i + 1)); DEVICE_ARGS=(--device "${!j}"); fi
done
hcast evaluate "$OUT/model" fashion-mnist --split test --threads "$THREADS" --workers 1 --no-progress \
    --json "$OUT/test_metrics.json" "${DEVICE_ARGS[@]}"

echo "== 3. reload through timm.create_model and 4. predict a few test images"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

import timm, torch
import hcast  # noqa: F401
from hcast.data import FashionMNIST

out = Path(sys.argv[1])
model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()
print(f"reloaded {model.pretrained_cfg['architecture']} with level classes {model.level_classes} "
      f"from {out / 'model'} via timm.create_model('local-dir:...', pretrained=True)")
test = FashionMNIST(split="test", indices=[0, 1, 2, 3])
(out / "images").mkdir(exist_ok=True)
for i in range(len(test)):
    image, label = test[i]
    image.save(out / "images" / f"test{i}_{test.classes[label].replace('/', '-').replace(' ', '_')}.png")
EOF
SEGMENT_ARGS=()  # a patch model (e.g. --model hier_vit_tiny) draws no segmentation
if "$PY" -c "import sys, timm, hcast; from hcast.train import uses_superpixels; \
sys.exit(0 if uses_superpixels(timm.create_model('local-dir:$OUT/model')) else 1)"; then
    SEGMENT_ARGS=(--segment "$OUT/segments.png")
fi
hcast predict "$OUT/model" "$OUT"/images/*.png "${SEGMENT_ARGS[@]}" "${DEVICE_ARGS[@]}"

echo "== summary"
"$PY" - "$OUT/test_metrics.json" "$TRAIN_S" "$START" <<'EOF'
import json, sys, time
m = json.load(open(sys.argv[1]))
for key in ("plain", "consistent"):
    d = m[key]
    accs = ", ".join(f"{n} {100 * a:.2f}%" for n, a in zip(m["level_names"], d["level_accuracy"]))
    print(f"test ({m['num_samples']} images), {key} decoding: {accs}; FPA {100 * d['fpa']:.2f}%; "
          f"TICE {100 * d['tice']:.2f}%")
print(f"fine-tuning took {int(sys.argv[2])} s; the whole job {time.time() - int(sys.argv[3]):.0f} s")
EOF
