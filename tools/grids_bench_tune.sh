#!/usr/bin/env bash
# The window (and DCW) search of the grids bench (docs/results/grids.md): for each solver given and each
# grid x step count, tune_sampler.py at a small budget (one rung of 250 samples, same seed everywhere),
# with its score cache shared with the bench's fid_table.py runs. Each search is cached and resumable:
# rerun the same command after a stop. Usage: tools/grids_bench_tune.sh SOLVER [SOLVER ...]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/grids_tune
for solver in "$@"; do
  for steps in 5 10; do
    # t:LIST = ddimN's own timesteps as an explicit list: not an upstream family, so the shift's target is
    # the grid's next timestep (ddimN keeps upstream's stride T // (S - 1) + 1): separates the two
    tlist=$(python -c "print(','.join(str(t) for t in range(1000 - 1000 // $steps, -1, -(1000 // $steps))))")
    grids=("ddim$steps" "trailing$steps" "file:docs/grids/demo_fmnist32_ddim_$steps.json")
    if [ "$solver" = ddim ]; then grids+=("t:$tlist"); fi  # the bench ran the t: ablation for DDIM only
    for grid in "${grids[@]}"; do
      name="${solver}_$(echo "$grid" | sed 's|file:docs/grids/demo_fmnist32_ddim_|opt|; s|\.json||; s|^t:.*|tddim'$steps'|')"
      python scripts/tune_sampler.py --ref_batch data/fmnist_test2k_stats.npz --timestep_respacing "$grid" \
        --solver "$solver" --windows 0,2,5,10,20,40 --cutoffs 300 --rules adm --eps_scales 1 \
        --dcw_lows 0,-0.05,0.05 --rungs 250 --batch_size 250 --cache_dir runs/grids_cache \
        --json "runs/grids_tune/$name.json"
    done
  done
done
