#!/usr/bin/env bash
# One prepared GPU run for the reference model: continue training the bundled demo model,
# sample the FID protocol (500 DDIM-20 samples, --seed 0) from every saved checkpoint, raw and EMA, and
# (ANSWER=1) sample the answer grid with the last EMA. FID is computed afterwards on the CPU, from $OUT.
#
# Usage (repo root, Fashion-MNIST idx files in .gpu_data/, e.g. carried from /usr/share/datasets/fashion-mnist):
#   OUT=outdir TRAIN_S=330 bash tools/device_train_reference.sh
# Environment: TRAIN_S (training wall-clock limit, s), SAVE (steps between checkpoints, 500), BATCH (256),
# LR (2e-4), EMA (0.9995), N (protocol samples per checkpoint, 500), NLL (0/1: bits/dim of the bundled and
# the last EMA weights on the first 1000 test images; needs the t10k idx files too), NLL_S (limit per model, s),
# ANSWER (0/1), ANSWER_S (limit, s),
# WORK (scratch folder; a rerun on the same machine resumes training from its newest checkpoint).
# Every stage has a time limit and writes what it has to $OUT, so a slow stage cannot take the others down.
set -u
export PYTHONPATH="$PWD" OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
PY=${PY:-python3}
OUT=${OUT:?set OUT}
TRAIN_S=${TRAIN_S:-330}; SAVE=${SAVE:-500}; N=${N:-500}; EMA=${EMA:-0.9995}
W=${WORK:-/tmp/ref_work}; mkdir -p "$W" "$OUT"
# the demo model's flags, from its sidecar (guided_diffusion/assets/demo_fmnist32.json), not repeated here
MODEL=$($PY -c "import json; f = json.load(open('guided_diffusion/assets/demo_fmnist32.json'))['model_flags']; \
print(' '.join(f'--{k} {v}' for k, v in f.items()))") || exit 2
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
[ -f "$W/fm_train.npz" ] || timeout 60 $PY datasets/fashion_mnist.py --data_dir .gpu_data --split train \
  --out "$W/fm_train.npz" || exit 2
last=$(ls "$W"/train/model*.pt 2>/dev/null | sort | tail -1)
init=${last:-guided_diffusion/assets/demo_fmnist32.pt}
echo "training from $init for at most $TRAIN_S s"
timeout -s TERM "$TRAIN_S" $PY scripts/image_train.py --data_dir "$W/fm_train.npz" --out_dir "$W/train" $MODEL \
  --random_flip True --batch_size ${BATCH:-256} --lr ${LR:-2e-4} --ema_rate "$EMA" \
  --max_steps 1000000 --save_interval "$SAVE" --log_interval 100 --seed 2 --resume_checkpoint "$init" \
  > "$OUT/train_stdout.txt" 2>&1
echo "train exit $? (124 = stopped by the time limit, as planned)"
cp "$W/train/progress.csv" "$OUT/train_progress.csv" 2>/dev/null
# protocol samples of every checkpoint (raw and EMA), newest first, so a time-out loses the oldest
for ck in $(ls -t "$W"/train/model*.pt "$W"/train/ema_*.pt 2>/dev/null); do
  name=$(basename "$ck" .pt)
  [ -f "$OUT/protocol_$name.npz" ] && continue
  timeout 60 $PY scripts/image_sample_1gpu.py --model_path "$ck" $MODEL --use_ddim True --timestep_respacing ddim20 \
    --num_samples "$N" --batch_size "$N" --seed 0 --progress False --out_dir "$W/proto_$name" > /dev/null 2>&1 \
    && $PY -c "import glob, sys, numpy as np; f = glob.glob(sys.argv[1] + '/*.npz')[0]; \
np.savez_compressed(sys.argv[2], arr_0=np.load(f)['arr_0'][..., :1])" "$W/proto_$name" "$OUT/protocol_$name.npz" \
    && echo "protocol samples: $name"
done
ema=$(ls "$W"/train/ema_*.pt 2>/dev/null | sort | tail -1)
[ -n "$ema" ] || exit 3
cp "$ema" "$OUT/"; cp "$W/train/model$(basename "$ema" | sed 's/ema_[0-9.]*_//')" "$OUT/" 2>/dev/null
echo "last EMA: $ema"
if [ "${NLL:-0}" = 1 ]; then
  [ -f "$W/fm_test.npz" ] || timeout 60 $PY datasets/fashion_mnist.py --data_dir .gpu_data --split test \
    --out "$W/fm_test.npz" || exit 2
  for ck in guided_diffusion/assets/demo_fmnist32.pt "$ema"; do
    name=$(basename "$ck" .pt)
    timeout ${NLL_S:-120} $PY scripts/image_nll.py --model_path "$ck" $MODEL --data_dir "$W/fm_test.npz" \
      --num_samples 1000 --batch_size 500 --seed 0 --progress False --out_dir "$W/nll_$name" > "$OUT/nll_$name.txt" 2>&1
    cp "$W/nll_$name/bpd.json" "$OUT/bpd_$name.json" 2>/dev/null && echo "bits/dim: $name"
  done
fi
[ "${ANSWER:-0}" = 1 ] || exit 0
# the answer grid, sampled only: 1000 samples per cell, same seeds; evaluated on the CPU
timeout ${ANSWER_S:-200} $PY scripts/fid_table.py --phase sample --table_dir "$W/answer" --model_path "$ema" $MODEL \
  --num_samples 1000 --batch_size 1000 --progress False --steps 5,10,20 \
  --samplers ddim,ts-ddim,ts-ddim-adm-data,ts-ddim-offset,ddpm,ts-ddpm,ts-ddpm-adm-data,ts-ddpm-offset,dpm++2m,ts-dpm++2m,ipndm,ts-ipndm \
  --extra_cells "ddim:10:dcw_low=-0.05,ddim:10:eps_scale=1.005,ts-ddim:10:10:300,ts-ddim:10:20:300,ts-ddim:5:20:300,ts-ddim:20:10:300" \
  > "$OUT/answer_stdout.txt" 2>&1
echo "answer exit $?"
(cd "$W/answer" && tar czf "$OUT/answer_cells.tgz" cells) && ls -la "$OUT"
