#!/usr/bin/env bash
# fp32 against bf16 autocast pretraining on the same steps, alternating (docs/performance.md).
#   scripts/bench_bf16_pretrain.sh WORK_DIR [ROUNDS]      (run scripts/fetch_registry_ct.py first)
# Prints one line per run: mode, superpatches/s, first and last loss.
set -euo pipefail
W=${1:?work dir}; ROUNDS=${2:-2}
NEMESIS=${NEMESIS:-nemesis}; PY=${PY:-python3}
CT=${CT:-../shared/data/ct/abdomen_ct.nii.gz}
CHEST=${CHEST:-${NEMESIS_DATA_CACHE:-$HOME/.cache/napari-nemesis/registry-ct}/slicerio-1.4.0/CTChest4.nrrd}
mkdir -p "$W"
[ -f "$W/ph/phantom.json" ] || $NEMESIS phantom "$W/ph" --cases 4 --seed 1 --size small > /dev/null
$PY - "$W" "$CT" "$CHEST" <<'PYEOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1]).resolve()
e = [{"image": str(p), "id": "ph" + p.name[3:7]} for p in sorted((w / "ph" / "imagesTr").glob("img*.nii.gz"))]
e += [{"image": str(Path(f).resolve()), "id": n} for f, n in ((sys.argv[2], "realct"), (sys.argv[3], "chest")) if Path(f).is_file()]
(w / "ds.json").write_text(json.dumps({"training": [], "test": e}))
PYEOF
[ -d "$W/cache" ] || $NEMESIS prepare "$W/ds.json" --out "$W/cache" --include-unlabelled > /dev/null
for r in $(seq "$ROUNDS"); do for m in no-bf16 bf16; do
  rm -rf "$W/run_$m"
  $NEMESIS pretrain "$W/cache" --out "$W/run_$m" --preset small --steps 30 --batch 4 --seed 0 --log-every 5 \
      --checkpoint-every 1000 --device cpu --$m --json 2>/dev/null | tail -n 1 > "$W/res_${m}_$r.json"
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], round(r['superpatches_per_s'], 2), r['loss_first'], r['loss_last'])" "$W/res_${m}_$r.json" "$m"
done; done
