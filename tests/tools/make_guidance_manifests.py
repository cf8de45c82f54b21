"""Write tests/data/guidance_manifests.json: key -> shape of the official classifiers and the 64->256
upsampler, built on the meta device by our factories (no weights, no network).

These manifests come from OUR factories (the real checkpoint files were not available offline): they
guard against accidental architecture changes; they were not compared with the released files.

    python tests/tools/make_guidance_manifests.py
"""

import json
import os
import runpy

import torch

from guided_diffusion.script_util import create_classifier, sr_create_model_and_diffusion

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifests():
    configs = runpy.run_path(os.path.join(HERE, "official_configs.py"))  # tests/ is not a package
    OFFICIAL_CLASSIFIER_CONFIGS, OFFICIAL_UPSAMPLER_CONFIGS = (configs["OFFICIAL_CLASSIFIER_CONFIGS"],
                                                               configs["OFFICIAL_UPSAMPLER_CONFIGS"])

    out = {}
    with torch.device("meta"):
        for name, flags in OFFICIAL_CLASSIFIER_CONFIGS.items():
            out[name] = {k: list(v.shape) for k, v in create_classifier(**flags).state_dict().items()}
        for name, flags in OFFICIAL_UPSAMPLER_CONFIGS.items():
            model, _ = sr_create_model_and_diffusion(**flags)
            out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return out


if __name__ == "__main__":
    data = manifests()
    path = os.path.join(HERE, "data", "guidance_manifests.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=0, sort_keys=True)
        f.write("\n")
    for name, sd in data.items():
        n = sum(int(torch.tensor(s).prod()) if s else 1 for s in sd.values())
        print(f"{name}: {len(sd)} tensors, {n:,} parameters")
