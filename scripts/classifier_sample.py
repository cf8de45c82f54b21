r"""Sample with classifier guidance (Dhariwal & Nichol 2021), with every sampler option of image_sample.py.

ImageNet 64x64, upstream's command (guided-diffusion README) plus the time shift:

    python scripts/classifier_sample.py --model_path 64x64_diffusion.pt \
        --classifier_path 64x64_classifier.pt --classifier_scale 1.0 \
        --attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 \
        --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 \
        --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True \
        --use_fp16 True --use_scale_shift_norm True --classifier_depth 4 --classifier_width 128 \
        --classifier_attention_resolutions 32,16,8 --classifier_pool attention \
        --classifier_resblock_updown True --classifier_use_scale_shift_norm True \
        --timestep_respacing ddim25 --use_ddim True --do_time_shift True --window 40 --cutoff 300 \
        --num_samples 1000 --batch_size 64 --out_dir OUT

writes OUT/adm_cifar_ddim25step_40win_300cut_cls1.npz: arr_0 uint8 NHWC, arr_1 int64 labels (always:
the labels the classifier was asked for). Label k is drawn from (--seed, k) like a class-conditional
model's labels in image_sample.py; the diffusion model sees it only with --class_cond True.
Guidance: cond_fn = classifier_scale * grad_x log p(y | x_t, t), added to the mean for DDPM
(Sigma * grad) and to the score for DDIM and the other solvers (eps - sqrt(1 - a_t) * grad).

With no --model_path and no model flags (image_size and image_channels included) the bundled demo model
(grey Fashion-MNIST 32x32) is used, and the classifier gets its image size and channels; pair it with a
classifier trained by scripts/classifier_train.py on Fashion-MNIST and pass that classifier's flags
(--classifier_num_classes 10 --classifier_width ...).
Multi-process (mpiexec / torchrun), resumable parts, one-line errors, SIGTERM/SIGINT: as image_sample.py.
The classifier's SHA-256 and the classifier flags are part of the resume metadata.
"""


from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import GUIDANCE_GROUPS, parse_sampling_flags, run_sampling_on_ranks
from guided_diffusion.settings import ClassifierConfig, GuidanceConfig, add_settings


def create_parser():
    """image_sample.py's flags plus the guidance and classifier flags (their declarations win)."""
    import argparse

    from guided_diffusion.settings import SAMPLING_GROUPS, OneLineErrorParser

    parser = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_settings(parser, GuidanceConfig, ClassifierConfig, *SAMPLING_GROUPS)


def main(argv=None):
    job, _ = parse_sampling_flags(argv, parser=create_parser(), extras=GUIDANCE_GROUPS)
    return run_sampling_on_ranks(job)


if __name__ == "__main__":
    run_cli(main)
