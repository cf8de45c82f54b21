r"""Sample from an ADM model with one or more processes (GPUs), resumably; same flags as image_sample_1gpu.py.

    mpiexec -n 4 python scripts/image_sample.py --model_path ADM-IP.pt --image_size 32 \
        --timestep_respacing ddim5 --num_channels 128 --num_head_channels 32 --num_res_blocks 3 \
        --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True \
        --learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine \
        --use_scale_shift_norm True --batch_size 512 --num_samples 50000 --use_ddim True \
        --do_time_shift True --cutoff 300 --window 80 --out_dir OUTPUT_DIR \
        --data_type cifar10 --model_type adm

writes OUTPUT_DIR/adm_cifar10_ddim5step_80win_300cut.npz (arr_0: uint8 NHWC, arr_1: int64 labels
for class-conditional models), the same bytes for any process count and --batch_size.
Other launchers: `torchrun --nproc_per_node 4 scripts/image_sample.py ...`, or plain
`python scripts/image_sample.py ...` (one process). Rank r uses GPU (local rank % visible GPUs);
pick the GPUs with CUDA_VISIBLE_DEVICES or --gpu_id 0,1,2,3. Without CUDA each rank uses the CPU.

Finished batches are kept in OUTPUT_DIR/<name>.npz.parts/ until the npz is written: after a crash
or kill, rerun the same command to resume. Changed pixel flags are refused (--overwrite True
starts over). A NaN/inf sample stops every rank with one error line and exit status 2.
SIGTERM / SIGINT (on any rank) stop every rank after the batch in flight is written: one line
with the resume command, exit status 143 (SIGTERM) or 130 (SIGINT). OUT.npz.lock makes a second
run on the same output refuse (one line naming the other run) while the first is alive; a lock
left by a killed run is taken over. Reused parts are checked (SHA-256) and bad ones made again.
With no --model_path and no model flags it samples the bundled demo model (see image_sample_1gpu.py).
"""


from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling_on_ranks


def main(argv=None):
    job, _ = parse_sampling_flags(argv, description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1])
    return run_sampling_on_ranks(job)


if __name__ == "__main__":
    run_cli(main)
