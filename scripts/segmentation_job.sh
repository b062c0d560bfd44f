#!/usr/bin/env bash
# The real-input segmentation job: install hcast, build a small segmentation set from all
# 10 Fashion-MNIST garments pasted on crops of scikit-image photographs (held-out garments
# and background regions for validation), train a small CAST segmenter from scratch on the
# CPU within a budget (its encoder first learns to classify single garments, then it segments), print per-class IoU and `mIoU: NN.N`, draw a picture (image, CAST's
# hierarchical segments, predicted and true semantic maps with a legend), and segment three
# held-out images with `hcast segment`.
#
#   bash scripts/segmentation_job.sh                     # 2 idle cores: ~7 minutes of training
#                        (the budget is 840 CPU seconds: on a machine shared with other jobs it takes
#                         longer on the clock for the same work; --cpu-budget changes it)
#   OUT=/tmp/seg bash scripts/segmentation_job.sh        # output folder (default runs/segmentation_job)
#   bash scripts/segmentation_job.sh --cpu-budget 0 --steps 2000    # extra arguments go to the Python part
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-runs/segmentation_job}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg

echo "== install"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || echo "dataset-fashion-mnist not installed; torchvision will download Fashion-MNIST"
fi
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
if [ -z "${SKIP_INSTALL:-}" ]; then "$PY" -m pip install -q -e ".[train,seeds]"; fi
echo "load: $(uptime)"
THREADS=${THREADS:-$(nproc)}
echo "== build the data, train, evaluate the held-out split"
OMP_WAIT_POLICY=PASSIVE "$PY" scripts/segmentation_job.py --out "$OUT" --threads "$THREADS" "$@"
echo "== hcast segment on three held-out images"
"$PY" -m hcast.cli segment "$OUT/segmenter" "$OUT"/images/val*.png --out "$OUT/segments" --threads "$THREADS"
echo "load: $(uptime)"
echo "the whole job took $(( $(date +%s) - START )) s"
