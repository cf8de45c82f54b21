"""UNet: official checkpoint keys/shapes, the upstream reference output, fp16 conversion, attention kernels."""

import json
import os

import pytest
import torch

from guided_diffusion.script_util import create_model, create_model_and_diffusion
from guided_diffusion.unet import EncoderUNetModel, SuperResModel
from official_configs import OFFICIAL_CONFIGS
from reference_models import load_reference

MANIFESTS = json.load(open(os.path.join(os.path.dirname(__file__), "data", "unet_manifests.json")))


def _meta_model(**flags):
    with torch.device("meta"):
        return create_model(**flags)


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_state_dict_matches_manifest(name):
    """Keys and shapes equal the committed manifest (regression guard, built without weights)."""
    sd = _meta_model(**OFFICIAL_CONFIGS[name]).state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == MANIFESTS[name]


@pytest.mark.parametrize(
    "name, n_params_millions",
    # Parameter counts published in the ADM paper (Dhariwal & Nichol 2021), in millions.
    [("imagenet64_cond", 296), ("imagenet128_cond", 422), ("imagenet256_cond", 554), ("lsun256", 552)],
)
def test_official_parameter_counts(name, n_params_millions):
    sd = _meta_model(**OFFICIAL_CONFIGS[name]).state_dict()
    assert abs(sum(v.numel() for v in sd.values()) / 1e6 - n_params_millions) < 1.0


def test_cifar10_config_matches_spec():
    """The TS-DPM-ADM CIFAR-10 config: 494 tensors, 57,094,662 parameters, example shapes."""
    sd = _meta_model(**OFFICIAL_CONFIGS["cifar10_admip"]).state_dict()
    assert len(sd) == 494
    assert sum(v.numel() for v in sd.values()) == 57_094_662
    expected = {
        "time_embed.0.weight": (512, 128),
        "input_blocks.1.0.emb_layers.1.weight": (256, 512),
        "input_blocks.5.0.emb_layers.1.weight": (512, 512),
        "input_blocks.5.1.qkv.weight": (768, 256, 1),
        "output_blocks.0.0.in_layers.2.weight": (256, 512, 3, 3),
        "output_blocks.11.0.skip_connection.weight": (256, 384, 1, 1),
        "output_blocks.12.0.emb_layers.1.weight": (256, 512),
        "out.2.weight": (6, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "output_blocks.11.2.in_layers.0.weight" in sd  # up-ResBlock at index 2 after attention


def test_conv_resample_keys():
    sd = _meta_model(**OFFICIAL_CONFIGS["conv_resample_legacy"]).state_dict()
    assert "input_blocks.3.0.op.weight" in sd  # Downsample conv
    assert any(k.endswith(".conv.weight") and k.startswith("output_blocks") for k in sd)  # Upsample conv
    assert sd["out.2.weight"].shape[0] == 3  # no learned sigma


@pytest.mark.parametrize("image_size, mult", [(32, (1, 2, 2, 2)), (64, (1, 2, 3, 4)), (128, (1, 1, 2, 3, 4)),
                                              (256, (1, 1, 2, 2, 4, 4)), (512, (0.5, 1, 1, 2, 2, 4, 4))])
def test_default_channel_mult(image_size, mult):
    m = _meta_model(image_size=image_size, num_channels=64, num_res_blocks=1, attention_resolutions="")
    assert m.channel_mult == mult


def test_reference_unet_output():
    ref = load_reference("unet_cifar_small.pt")
    model, _ = create_model_and_diffusion(**ref["kwargs"])
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        for impl in ("math", "sdpa"):
            model.set_attention_impl(impl)
            out = model(ref["x"], ref["t"])
            assert out.shape == ref["out"].shape
            assert (out - ref["out"]).abs().max().item() <= 1e-5, impl


@pytest.mark.parametrize("new_order", [False, True])
def test_sdpa_equals_math_attention(new_order):
    torch.manual_seed(0)
    model = create_model(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="16,8",
                         channel_mult="1,2", num_heads=2, learn_sigma=True, use_new_attention_order=new_order)
    for p in model.parameters():  # zero-initialised layers would hide differences
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999])
    with torch.no_grad():
        a = model.set_attention_impl("math")(x, t)
        b = model.set_attention_impl("sdpa")(x, t)
    assert (a - b).abs().max().item() <= 1e-5


def test_new_attention_order_changes_output():
    """The order is invisible in the keys: same weights, different outputs (docs/checkpoints.md warning)."""
    torch.manual_seed(0)
    flags = dict(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8", channel_mult="1,2",
                 num_heads=2)
    a = create_model(use_new_attention_order=False, **flags)
    b = create_model(use_new_attention_order=True, **flags)
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.05)
    b.load_state_dict(a.state_dict(), strict=True)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert (a(x, t) - b(x, t)).abs().max().item() > 1e-4


def test_fp16_conversion_as_upstream():
    model = create_model(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8",
                         channel_mult="1,2", use_fp16=True, class_cond=True)
    model.convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    assert model.middle_block[0].in_layers[0].weight.dtype == torch.float32  # norms stay fp32
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32
    assert model.label_emb.weight.dtype == torch.float32
    model.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    flags = dict(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8", channel_mult="1,2")
    a = create_model(use_checkpoint=False, **flags)
    b = create_model(use_checkpoint=True, **flags)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    a(x, t).square().mean().backward()
    b(x, t).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_class_conditional_and_grey_forward():
    model = create_model(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8",
                         channel_mult="1,2", class_cond=True, learn_sigma=True, image_channels=1)
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), y=torch.tensor([3, 999]))
    assert out.shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))


def test_superres_and_classifier_models():
    sr = SuperResModel(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                       attention_resolutions=(2,), channel_mult=(1, 2))
    out = sr(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), low_res=torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 6, 16, 16)
    for pool in ("adaptive", "attention", "spatial", "spatial_v2"):
        clf = EncoderUNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=10, num_res_blocks=1,
                               attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32, pool=pool)
        assert clf(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).shape == (2, 10), pool
        assert not any(k.startswith("output_blocks") for k in clf.state_dict())
