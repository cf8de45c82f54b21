"""Official ADM / ADM-IP model flags (from the guided-diffusion and DDPM-IP READMEs)."""

OFFICIAL_CONFIGS = {
    # guided-diffusion README, "64x64 model"
    "imagenet64_cond": dict(attention_resolutions="32,16,8", class_cond=True, dropout=0.1, image_size=64,
                            learn_sigma=True, num_channels=192, num_head_channels=64, num_res_blocks=3,
                            resblock_updown=True, use_new_attention_order=True, use_fp16=True,
                            use_scale_shift_norm=True),
    "imagenet128_cond": dict(attention_resolutions="32,16,8", class_cond=True, image_size=128, learn_sigma=True,
                             num_channels=256, num_heads=4, num_res_blocks=2, resblock_updown=True, use_fp16=True,
                             use_scale_shift_norm=True),
    "imagenet256_cond": dict(attention_resolutions="32,16,8", class_cond=True, image_size=256, learn_sigma=True,
                             num_channels=256, num_head_channels=64, num_res_blocks=2, resblock_updown=True,
                             use_fp16=True, use_scale_shift_norm=True),
    "lsun256": dict(attention_resolutions="32,16,8", class_cond=False, dropout=0.1, image_size=256, learn_sigma=True,
                    num_channels=256, num_head_channels=64, num_res_blocks=2, resblock_updown=True, use_fp16=True,
                    use_scale_shift_norm=True),
    # TS-DPM-ADM README command (CIFAR-10 ADM / ADM-IP; ImageNet-32 uses the same)
    "cifar10_admip": dict(image_size=32, num_channels=128, num_head_channels=32, num_res_blocks=3,
                          attention_resolutions="16,8", resblock_updown=True, use_new_attention_order=True,
                          learn_sigma=True, dropout=0.3, use_scale_shift_norm=True),
    # DDPM-IP README (CelebA-64 / LSUN tower-64 ADM-IP)
    "celeba64_admip": dict(image_size=64, num_channels=192, num_head_channels=64, num_res_blocks=3,
                           attention_resolutions="32,16,8", resblock_updown=True, use_new_attention_order=True,
                           learn_sigma=True, dropout=0.1, use_scale_shift_norm=True),
    # DDPM-IP README (FFHQ-128 ADM-IP)
    "ffhq128_admip": dict(image_size=128, num_channels=256, num_head_channels=64, num_res_blocks=3,
                          attention_resolutions="32,16,8", resblock_updown=True, use_new_attention_order=True,
                          learn_sigma=True, dropout=0.1, use_scale_shift_norm=True),
    # A conv-resample, legacy-attention, no-scale-shift variant (covers the other key scheme)
    "conv_resample_legacy": dict(image_size=32, num_channels=64, num_res_blocks=2, attention_resolutions="16",
                                 channel_mult="1,2,2", num_heads=4, num_heads_upsample=2,
                                 use_scale_shift_norm=False, resblock_updown=False, learn_sigma=False),
}

# Official noisy-image classifiers (guided-diffusion README "CLASSIFIER_FLAGS"; the ADM paper's table 12
# gives depth 4 at 64x64). Built with create_classifier (1000 classes, 3 channels, 64 channels per head).
_CLASSIFIER_COMMON = dict(classifier_attention_resolutions="32,16,8", classifier_width=128, classifier_pool="attention",
                          classifier_resblock_updown=True, classifier_use_scale_shift_norm=True,
                          classifier_use_fp16=True)
OFFICIAL_CLASSIFIER_CONFIGS = {
    "imagenet64_classifier": dict(image_size=64, classifier_depth=4, **_CLASSIFIER_COMMON),
    "imagenet128_classifier": dict(image_size=128, classifier_depth=2, **_CLASSIFIER_COMMON),
    "imagenet256_classifier": dict(image_size=256, classifier_depth=2, **_CLASSIFIER_COMMON),
}

# Official 64 -> 256 upsampler (guided-diffusion README "Upsampling"); sr_create_model_and_diffusion flags.
OFFICIAL_UPSAMPLER_CONFIGS = {
    "upsampler_64_256": dict(large_size=256, small_size=64, attention_resolutions="32,16,8", class_cond=True,
                             diffusion_steps=1000, learn_sigma=True, noise_schedule="linear", num_channels=192,
                             num_heads=4, num_res_blocks=2, resblock_updown=True, use_fp16=True,
                             use_scale_shift_norm=True),
}
