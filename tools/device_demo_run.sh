#!/usr/bin/env bash
# One prepared GPU run: train the demo model, sample the FID grid with it, benchmark the loops.
# Usage (repo root): OUT=outdir TRAIN_S=125 MAX_STEPS=3000 N=1000 bash tools/device_demo_run.sh
# Needs the Fashion-MNIST train idx files in .gpu_data/. Every stage has a time limit and writes
# what it has to $OUT, so a slow stage cannot take the others down with it.
set -u
export PYTHONPATH="$PWD" OMP_NUM_THREADS=4
PY=${PY:-python3}
OUT=${OUT:?set OUT}
TRAIN_S=${TRAIN_S:-125}; MAX_STEPS=${MAX_STEPS:-3000}; N=${N:-1000}; BENCH=${BENCH:-1}
W=${WORK:-/tmp/demo_work}; mkdir -p "$W" "$OUT"
# the demo model's flags, from its sidecar (guided_diffusion/assets/demo_fmnist32.json), not repeated here
MODEL=$($PY -c "import json; f = json.load(open('guided_diffusion/assets/demo_fmnist32.json'))['model_flags']; \
print(' '.join(f'--{k} {v}' for k, v in f.items()))") || exit 2
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
timeout 30 $PY datasets/fashion_mnist.py --data_dir .gpu_data --split train --out "$W/fm_train.npz" --overwrite
timeout "$TRAIN_S" $PY scripts/image_train.py --data_dir "$W/fm_train.npz" --out_dir "$W/train" $MODEL \
  --batch_size ${BATCH:-256} --lr ${LR:-4e-4} --max_steps "$MAX_STEPS" --save_interval ${SAVE:-200} \
  --log_interval 100 --ema_rate 0.9995 --seed 0 > "$OUT/train_stdout.txt" 2>&1
echo "train exit $?"
cp "$W/train/progress.csv" "$OUT/train_progress.csv" 2>/dev/null
EMA=$(ls "$W"/train/ema_0.9995_*.pt 2>/dev/null | sort | tail -1)
echo "ema checkpoint: $EMA"; [ -n "$EMA" ] || exit 3
cp "$EMA" "$OUT/demo_ema.pt"; cp "$(dirname "$EMA")/model$(basename "$EMA" | sed 's/ema_0.9995_//')" "$OUT/demo_raw.pt"
SEARCH="ts-ddim:10:20:300,ts-ddim:10:80:300,ts-ddim:10:40:200,ts-ddim:10:40:500,ts-ddim:5:40:300,ts-ddim:5:160:300,ts-ddim:5:80:200"
timeout ${SAMPLE_S:-70} $PY scripts/fid_table.py --phase sample --table_dir "$W/table" --model_path "$EMA" $MODEL \
  --num_samples "$N" --batch_size "$N" --progress False --extra_cells "$SEARCH" \
  --samplers ddim,ts-ddim,ts-ddim-pndm,ddpm,ts-ddpm,ts-ddpm-pndm > "$OUT/sample_stdout.txt" 2>&1
echo "sample exit $?"
$PY - "$W/table/cells" "$OUT" <<'PY'
import os, sys, numpy as np
cells, out = sys.argv[1], sys.argv[2]
packs, cur, size = [], {}, 0
for key in sorted(os.listdir(cells)):
    f = [n for n in os.listdir(os.path.join(cells, key)) if n.endswith(".npz")]
    if len(f) != 1: continue
    cur[key] = np.load(os.path.join(cells, key, f[0]))["arr_0"][..., 0]
    size += cur[key].nbytes
    if size > 10e6: packs.append(cur); cur, size = {}, 0
if cur: packs.append(cur)
for i, p in enumerate(packs):
    np.savez_compressed(os.path.join(out, f"cells_{i}.npz"), **p)
print("packed", sum(len(p) for p in packs), "cells into", len(packs), "files")
PY
[ "$BENCH" = 1 ] && timeout ${BENCH_S:-40} $PY tools/benchmark_sampling.py --batch_size 256 --steps 20 --repeats 2 \
  --warmup 1 --autocast bf16 --channels_last True --json "$OUT/bench_gpu.json" > "$OUT/bench_stdout.txt" 2>&1
echo "bench exit $?"; tail -25 "$OUT/bench_stdout.txt" 2>/dev/null; tail -3 "$OUT/train_stdout.txt"; ls -la "$OUT"
