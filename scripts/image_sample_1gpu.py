"""Sample from an ADM model with DDIM / DDPM, optionally with the time-shift sampler (one process).

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
With no --model_path and no model flags it samples the bundled demo model (Fashion-MNIST):

    python scripts/image_sample_1gpu.py --num_samples 64 --use_ddim True --timestep_respacing ddim10 \
        --do_time_shift True --window 40 --cutoff 300 --out_dir out --compare_grid out/cmp.png

Finished batches are kept in OUT.npz.parts/ until the npz is written: rerun to resume.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from guided_diffusion.sample_cli import parse_sampling_args, run_cli, run_single_process  # noqa: E402


def main(argv=None):
    args = parse_sampling_args(argv, description=__doc__.split("\n")[0])
    if args.gpu_id:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu_id
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = run_single_process(args, device)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
