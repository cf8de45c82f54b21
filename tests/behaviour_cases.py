"""Fixed sampling commands whose npz bytes must not change across refactors (see test_behaviour_hashes.py)."""

import hashlib
import os
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CHECKPOINT = os.path.join(ROOT, "guided_diffusion", "assets", "demo_fmnist32.pt")

# The paper's README command with a narrower network (num_channels 32) and few samples.
PAPER_FLAGS = (
    "--image_size 32 --timestep_respacing ddim5 --num_channels 32 --num_head_channels 32 --num_res_blocks 3 "
    "--attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True --learn_sigma True "
    "--dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True "
    "--batch_size 3 --num_samples 5 --use_ddim True --do_time_shift True --cutoff 300 --window 80 "
    "--data_type cifar10 --model_type adm --progress False --seed 7"
).split()
PAPER_MODEL = dict(image_size=32, num_channels=32, num_head_channels=32, num_res_blocks=3,
                   attention_resolutions="16,8", resblock_updown=True, use_new_attention_order=True,
                   learn_sigma=True, dropout=0.3, noise_schedule="cosine", use_scale_shift_norm=True)


def make_paper_checkpoint(path):
    """A deterministic checkpoint of the paper's architecture at width 32 (weights from torch seed 0)."""
    from guided_diffusion.script_util import create_model_and_diffusion

    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**PAPER_MODEL)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    torch.save(model.state_dict(), path)
    return path


def machine_key():
    """What the npz bytes depend on besides the code: "TORCH_MAJOR.MINOR/CPU_CAPABILITY", e.g.
    "2.13/AVX512": the float32 kernel set torch dispatches to (AVX2 and AVX-512 round differently).

    oneDNN's convolutions pick their own instruction set, the hardware's like ATen's unless an
    environment variable lowers one of them: then the key says so (e.g. "2.13/AVX2+oneDNN:native"
    for ``ATEN_CPU_CAPABILITY=avx2`` alone), since such a mix writes other bytes than either machine.
    ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` reproduces an AVX2 machine's bytes.
    """
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    cap = torch.backends.cpu.get_cpu_capability()
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if onednn in ("", "ALL"):
        if os.environ.get("ATEN_CPU_CAPABILITY"):
            cap += "+oneDNN:native"
    elif not onednn.startswith(cap):
        cap += f"+oneDNN:{onednn}"
    return f"{major}.{minor}/{cap}"


def demo_checkpoint_sha256():
    with open(DEMO_CHECKPOINT, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@dataclass
class Case:
    flags: list
    filename: str
    paper_model: bool = False

    def argv(self, checkpoint, out_dir):
        head = ["--model_path", checkpoint] if self.paper_model else []
        return head + self.flags + ["--out_dir", out_dir]


CASES = {
    "paper_ts_ddim": Case(PAPER_FLAGS, "adm_cifar10_ddim5step_80win_300cut.npz", paper_model=True),
    "paper_ts_ddpm": Case(PAPER_FLAGS + ["--use_ddim", "False", "--timestep_respacing", "6"],
                          "adm_cifar10_6step_80win_300cut.npz", paper_model=True),
    "demo_ts_ddim": Case("--num_samples 6 --batch_size 4 --use_ddim True --timestep_respacing ddim10 "
                         "--do_time_shift True --window 40 --cutoff 300 --progress False --seed 3".split(),
                         "demo_fmnist32_ddim10step_40win_300cut.npz"),
    "demo_ddpm_pndm": Case("--num_samples 4 --batch_size 4 --timestep_respacing 8 --do_time_shift True "
                           "--window 20 --cutoff 200 --ts_rule pndm --progress False".split(),
                           "demo_fmnist32_8step_20win_200cut_pndm.npz"),
    "demo_ddim_eta": Case("--num_samples 3 --batch_size 3 --use_ddim True --eta 0.5 --timestep_respacing ddim6 "
                          "--progress False".split(), "demo_fmnist32_ddim6step.npz"),
}
