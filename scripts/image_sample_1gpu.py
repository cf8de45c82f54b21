r"""Sample from an ADM model with DDIM / DDPM, optionally with the time-shift sampler (one process).

The paper's command (TS-DDIM, 5 steps, CIFAR-10 ADM checkpoint):

    python scripts/image_sample_1gpu.py --model_path ADM-IP.pt --image_size 32 \
        --timestep_respacing ddim5 --num_channels 128 --num_head_channels 32 --num_res_blocks 3 \
        --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True \
        --learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine \
        --use_scale_shift_norm True --batch_size 512 --num_samples 50000 --use_ddim True \
        --do_time_shift True --cutoff 300 --window 80 --out_dir OUTPUT_DIR \
        --data_type cifar10 --model_type adm

writes OUTPUT_DIR/adm_cifar10_ddim5step_80win_300cut.npz (arr_0: uint8 NHWC). Runs on CUDA when
present, else the CPU; needs no MPI. For several GPUs: mpiexec -n N python scripts/image_sample.py.

With NO --model_path and NO model flags it samples the bundled demo model (grey Fashion-MNIST
32x32, guided_diffusion/assets/demo_fmnist32.pt) with the demo's own model flags (listed in
guided_diffusion/assets/demo_fmnist32.json; the defaults shown above are upstream's, not the demo's):

    python scripts/image_sample_1gpu.py {demo}

Finished batches are kept in OUT.npz.parts/ until the npz is written: rerun to resume.
SIGTERM / SIGINT finish the batch in flight, print the resume command and exit 143 / 130.
"""

import os
import shlex

from guided_diffusion.cli import run_cli
from guided_diffusion.demo import DEMO_TS_PRESETS, demo_command
from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling


def epilog():
    """The help text below the flags, with the demo model's measured window per step count."""
    presets = ", ".join(f"window {w} at {s} steps" for s, (w, c) in sorted(DEMO_TS_PRESETS.items()))
    cutoffs = sorted({c for _, c in DEMO_TS_PRESETS.values()})
    demo = shlex.join(demo_command(10))
    text = __doc__.split("\n", 1)[1].replace("{demo}", demo)
    return text + f"\nThe demo model's best measured time shift (adm rule): {presets}, cutoff {cutoffs[0]}.\n"


def main(argv=None):
    job, _ = parse_sampling_flags(argv, description=__doc__.split("\n")[0], epilog=epilog())
    if job.run.gpu_id:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.run.gpu_id
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return run_sampling(job, device=device)


if __name__ == "__main__":
    run_cli(main)
