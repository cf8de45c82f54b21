"""guided_diffusion.load_model and the mismatch line naming the flags that differ from the JSON beside a checkpoint."""

import json
import shutil

import pytest
import torch

import guided_diffusion
from guided_diffusion.checkpoint import CheckpointError
from guided_diffusion.demo import DEMO_CHECKPOINT, DEMO_FLAGS


def _x(model, diffusion):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    t = torch.tensor([diffusion.timestep_map[-1]] * 2)
    with torch.no_grad():
        return model(x, t)


def test_demo_three_ways_give_the_same_network(tmp_path):
    flags = json.load(open(DEMO_FLAGS))["model_flags"]
    a = guided_diffusion.load_model(None, timestep_respacing="ddim10")  # the demo, its JSON beside it
    b = guided_diffusion.load_model(DEMO_CHECKPOINT, flags=DEMO_FLAGS, timestep_respacing="ddim10")
    c = guided_diffusion.load_model(DEMO_CHECKPOINT, flags=flags, timestep_respacing="ddim10")
    assert a[1].num_timesteps == 10 and not a[0].training
    assert torch.equal(_x(*a), _x(*b)) and torch.equal(_x(*a), _x(*c))


def test_checkpoint_without_flags_says_what_to_pass(tmp_path):
    ckpt = tmp_path / "m.pt"
    shutil.copy(DEMO_CHECKPOINT, ckpt)
    with pytest.raises(ValueError, match="no flags given and no .*m.json beside it"):
        guided_diffusion.load_model(ckpt)


def test_mismatch_names_the_flags_that_differ_from_the_json(tmp_path):
    flags = json.load(open(DEMO_FLAGS))["model_flags"]
    with pytest.raises(CheckpointError) as err:
        guided_diffusion.load_model(DEMO_CHECKPOINT, flags={**flags, "num_channels": 64})
    text = str(err.value)
    assert "Flags that differ from" in text and "--num_channels 64 (file: 32)" in text
    assert "Likely differing" not in text and "demo model: give no model flags" in text
