#!/usr/bin/env bash
# Train the "bnn-tabular-classifier" PFN on one GPU within a wall-clock budget (default
# 560 s, i.e. under 10 minutes with start-up), bf16, resumable.
#
#   bash benchmarks/train_classifier_pfn.sh OUT [BUDGET_SECONDS]      # from the repo root
#
# First call (no OUT.state.json yet): a short calibration run (CALIB_STEPS steps, written to
# OUT.calib and deleted) measures steps/s on this machine after warm-up; the step count of
# the real run is then 0.9 x rate x (seconds left), so its cosine schedule ends inside the
# budget, with --time-limit as the hard stop. Writes OUT.safetensors + OUT.json (weights,
# frozen config, loss history) and OUT.state.* (optimiser moments, RNG, step) every
# --checkpoint-every steps. A later call with OUT.state.json present resumes exactly
# (--resume) with the step count stored in OUT.json, for another BUDGET seconds.
#
# Prior: TabularBNNClassifierPrior (tabular_classifier_model with its latent logit scale tau ~
# LogNormal(0, 1), the default of --logit-scale-prior; 1-30 features (breast cancer has 30), 2-10 classes,
# random relabelling), drawn on the GPU. Data: training-set size n log-uniform on 1..1024,
# 128 queries per data set, ~64k tokens per step (512 data sets at small n, ~56 at n=1024).
# Model: d_model 256, 6 layers, 8 heads, feed-forward 512 (3.3 M parameters, 13 MB fp32).
#
# Environment overrides (e.g. a CPU dry run): PYTHON, DEVICE (cuda), PRECISION (bf16),
# MODEL, DATA, EXTRA (more pfn-train options), CALIB_STEPS (60).
set -euo pipefail

OUT=${1:?usage: benchmarks/train_classifier_pfn.sh OUT [BUDGET_SECONDS]}
BUDGET=${2:-560}
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
MODEL=${MODEL:-"--d-model 256 --layers 6 --heads 8 --d-ff 512 --lr 5e-4"}
DATA=${DATA:-"--max-train 1024 --min-train 1 --size-sampling log_uniform --num-queries 128 --tokens-per-step 65536 --batch-size 512"}
EXTRA=${EXTRA:-}
CALIB_STEPS=${CALIB_STEPS:-60}
START=$(date +%s)

# shellcheck disable=SC2086  # MODEL/DATA/EXTRA are option lists
train() {
    "$PYTHON" -m pyrobayes.cli pfn train --prior bnn-tabular-classifier --max-features 30 \
        --max-classes 10 $DATA $MODEL --seed 0 --device "$DEVICE" --precision "$PRECISION" \
        --no-progress $EXTRA "$@"
}

left() { echo $((BUDGET - ($(date +%s) - START))); }

if [ -f "$OUT.state.json" ]; then
    # --time-limit counts the training seconds of earlier runs too
    read -r STEPS DONE < <("$PYTHON" -c 'import json, sys
t = json.load(open(sys.argv[1]))["training"]
print(t["train_config"]["steps"], int(t["seconds"]))' "$OUT.json")
    LEFT=$(($(left) - 15))
    echo "resuming $OUT towards step $STEPS for $LEFT s (after $DONE s of training)"
    train --out "$OUT" --steps "$STEPS" --resume --time-limit "$((DONE + LEFT))" \
        --checkpoint-every 500 --log-every 100
    exit 0
fi

# calibration: steps/s over its second half (after CUDA/allocator warm-up)
LOG_EVERY=$((CALIB_STEPS / 3))
train --out "$OUT.calib" --steps "$CALIB_STEPS" --checkpoint-every 0 --log-every "$LOG_EVERY"
RATE=$("$PYTHON" -c 'import json, sys
h = json.load(open(sys.argv[1]))["training"]["history"]
a, b = h[0], h[-1]
print((b["step"] - a["step"]) / max(1e-9, b["seconds"] - a["seconds"]))' "$OUT.calib.json")
rm -f "$OUT.calib.json" "$OUT.calib.safetensors" "$OUT.calib.state.json" "$OUT.calib.state.safetensors"
LEFT=$(($(left) - 15)) # start-up of the real run
STEPS=$("$PYTHON" -c "print(max(100, int(0.9 * $RATE * $LEFT)))")
echo "calibration: $RATE steps/s; training $STEPS steps in at most $LEFT s"
train --out "$OUT" --steps "$STEPS" --time-limit "$LEFT" --checkpoint-every 500 --log-every 100
