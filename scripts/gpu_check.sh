#!/usr/bin/env bash
# One short GPU session: prove the CUDA paths and measure them; results (JSON, CSV, Markdown, a log) go
# to OUTDIR, with summary.md: per step its wall time, images per second, peak GPU memory and device.
# Sized for about nine minutes on one H200; EPOCHS, TEST_LIMIT, RESTARTS and FILL_EPOCHS change the sizes.
#
#   make gpu-bundle                       # here: gpu/ with the wheels the GPU machine lacks and Fashion-MNIST
#   scripts/gpu_check.sh OUTDIR           # there (gpu/ travels with the code)
#   scripts/gpu_check.sh OUTDIR --tiny    # the rehearsal: every step on the CPU at the smallest sizes
#
# Steps: 1. the device-side tests on the device (the loader's gathers, a training run, every attack
# against torchattacks); 2. `bench --compile` (epoch times at width 64, the bf16 attack gap, torch.compile
# against eager); 3. several models at once on one device (the grid's local workers) against one process;
# 4. `plan` of the quick profile from that bench and that fill; 5. Table I of SM-UM, SM-AT, AAML-UM and AAML-AT at full
# width on the whole Fashion-MNIST; 6. the robustness audit of AAML-UM on CUDA. The quick profile compiles
# (steps 4 and 5 run compiled).
# A failed step is logged and the next one still runs; the exit status says whether all passed.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [--tiny]}
MODE=${2:-}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) && rm -f "$OUT/steps.tsv"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/log.txt") 2>&1

if [ -d gpu/wheels ]; then  # no package index on the GPU machine
  $PY -m pip install -q --no-deps --no-index --find-links gpu/wheels -r scripts/gpu_requirements.txt
fi
if [ -d gpu/data ]; then  # Fashion-MNIST travels compressed (30 MB); torchvision reads it uncompressed
  for gz in gpu/data/FashionMNIST/raw/*.gz; do [ -f "${gz%.gz}" ] || gunzip -kf "$gz"; done
  export REPRODUCE_DATA=${REPRODUCE_DATA:-$PWD/gpu/data}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export REPRODUCE_RUNS=$OUT/runs

if [ "$MODE" = --tiny ]; then
  # the compiled path through a backend that traces without generating code (seconds, not minutes)
  export REPRODUCE_COMPILE_BACKEND=aot_eager
  DEVICE=cpu PROFILE=smoke BENCH=--smoke TESTS=(-k crop_and_flip) FILL=(--workers 2)
  BUDGET=(--budget compile=true --budget width=4 --budget epochs=1 --budget train_limit=300 --budget adv_train_limit=100
          --budget val_limit=100 --budget test_limit=20 --budget restarts=1 --budget mim_steps=5
          --budget autoattack_steps=5 --budget apgd_steps=5 --budget square_queries=30 --budget square_images=20)
  FILL_BUDGET=(--budget width=4 --budget epochs=1 --budget train_limit=300 --budget val_limit=100)
else
  DEVICE=cuda PROFILE=quick BENCH= TESTS=() FILL=(--workers 5 --gpus 0 --workers-per-gpu 5)
  BUDGET=(--budget "epochs=${EPOCHS:-2}" --budget "test_limit=${TEST_LIMIT:-1000}"
          --budget "restarts=${RESTARTS:-5}" --budget autoattack=apgd --budget autoattack_steps=50)
  FILL_BUDGET=(--budget "epochs=${FILL_EPOCHS:-2}")
fi
UM='SM-UM ConL-UM TL-UM CenL-UM AAML-UM'
failed=()
step() {
  local name=$1; shift
  echo "== $name ($(date -u +%T)): $*"
  local start=$SECONDS
  local status=passed
  "$@" || { failed+=("$name"); status=failed; }
  echo "== $name: $((SECONDS - start)) s"
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$status" >> "$OUT/steps.tsv"
}
fill() {  # the five UM models of the quick profile: one process, then several on one device
  local start=$SECONDS
  $PY -m reproduce grid --table table1 --only $UM --profile $PROFILE --dataset fashion-mnist --device $DEVICE --quiet \
    --runs "$OUT/fill-one" "${FILL_BUDGET[@]}" || return 1
  local one=$((SECONDS - start))
  start=$SECONDS
  $PY -m reproduce grid --table table1 --only $UM --profile $PROFILE --dataset fashion-mnist --quiet --executor local \
    "${FILL[@]}" --runs "$OUT/fill-many" "${FILL_BUDGET[@]}" || return 1
  local many=$((SECONDS - start))
  echo "{\"models\": 5, \"one_process_s\": $one, \"workers_s\": $many, \"workers\": \"${FILL[*]}\"}" \
    | tee "$OUT/fill.json"
}

$PY -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available(),
        torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
step device-tests env REPRODUCE_TEST_DEVICE=$DEVICE $PY -m pytest -q -p no:cacheprovider \
  tests/test_data.py tests/test_attacks_torchattacks.py "${TESTS[@]}" --junitxml "$OUT/device_tests.xml"
# shellcheck disable=SC2086
step bench $PY -m reproduce bench --device $DEVICE $BENCH --compile --json "$OUT/bench.json"
step fill fill
step plan bash -c "$PY -m reproduce plan --profile $PROFILE --bench '$OUT/bench.json' \
  \$([ -f '$OUT/fill.json' ] && echo --fill '$OUT/fill.json') --hours 2 | tee '$OUT/plan.txt'"
step table1 $PY -m reproduce table1 --profile $PROFILE --dataset fashion-mnist --device $DEVICE --train --quiet \
  --only SM-UM SM-AT AAML-UM AAML-AT "${BUDGET[@]}" --out "$OUT/table1"
# the robustness audit on CUDA, of a model the table1 step trained (its columns from the store's caches)
step audit $PY -m reproduce audit AAML-UM --profile $PROFILE --dataset fashion-mnist --device $DEVICE --quiet \
  "${BUDGET[@]}" --out "$OUT/audit"

$PY -c "from reproduce.bench import summarise_check; summarise_check('$OUT')" && cat "$OUT/summary.md"
echo "results in $OUT; failed steps: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
