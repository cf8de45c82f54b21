"""The bundled demo model: a small grey-scale ADM UNet trained on Fashion-MNIST 32x32.

``assets/demo_fmnist32.pt`` is its EMA state_dict and ``assets/demo_fmnist32.json`` its model and
diffusion flags (see ``assets/MODEL_CARD.md``). Sampling scripts use it when they are given no
``--model_path`` and no model flags, so a fresh clone can sample with no download.
"""

import json
import os

ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEMO_CHECKPOINT = os.path.join(ASSET_DIR, "demo_fmnist32.pt")
DEMO_FLAGS = os.path.join(ASSET_DIR, "demo_fmnist32.json")


def demo_available():
    return os.path.isfile(DEMO_CHECKPOINT) and os.path.isfile(DEMO_FLAGS)


def demo_flags():
    """The demo model's model/diffusion flags (a dict of upstream flag names)."""
    if not demo_available():
        raise FileNotFoundError(
            f"no --model_path given and the bundled demo model is missing ({DEMO_CHECKPOINT}); "
            "pass --model_path and the model flags of your checkpoint"
        )
    with open(DEMO_FLAGS) as f:
        return json.load(f)["model_flags"]
