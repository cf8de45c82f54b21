"""--compare_grid reuses the run's own samples for its panel and samples only the other one."""

import numpy as np
import pytest
import torch

from guided_diffusion.jobs import sample as sample_job
from guided_diffusion.jobs.sample import SamplingJob, build_model_and_diffusion, run_sampling


def _job(tmp_path, do_time_shift):
    return SamplingJob.from_flags(dict(
        num_samples=3, batch_size=3, use_ddim=True, timestep_respacing="ddim3", do_time_shift=do_time_shift,
        window=10, cutoff=300, out_dir=str(tmp_path), grid_size=2, compare_grid=str(tmp_path / "cmp.png"),
        progress=False)).with_demo_model()


@pytest.mark.parametrize("do_time_shift", [True, False])
def test_compare_grid_samples_one_panel_and_equals_sampling_both(tmp_path, monkeypatch, do_time_shift):
    job = _job(tmp_path / "run", do_time_shift)
    calls = []
    real = sample_job.generate_samples

    def counting(model, diffusion, indices, **kw):
        calls.append((list(indices), kw["sampler"].time_shift is not None))
        return real(model, diffusion, indices, **kw)

    monkeypatch.setattr(sample_job, "generate_samples", counting)
    run_sampling(job, device="cpu")
    # the run's own batch (3 samples), then one panel of 2 with the other setting
    assert calls == [([0, 1, 2], do_time_shift), ([0, 1], not do_time_shift)]
    reused = (tmp_path / "run" / "cmp.png").read_bytes()

    model, diffusion = build_model_and_diffusion(job, torch.device("cpu"))
    both = job.with_flags(compare_grid=str(tmp_path / "both.png"))
    sample_job.write_compare_grid(both, model, diffusion, torch.device("cpu"))  # samples both panels
    assert calls[2:] == [([0, 1], False), ([0, 1], True)]
    assert (tmp_path / "both.png").read_bytes() == reused
    with np.load(job.output_path()) as z:
        assert z["arr_0"].shape == (3, 32, 32, 3)
