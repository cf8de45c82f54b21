"""Time grid ``quadN`` and the deterministic solvers of ``guided_diffusion/solvers.py``."""

import numpy as np
import pytest

from guided_diffusion.schedules import space_timesteps


# ----------------------------------------------------------------------------- quadN grid
def test_quad_grid_is_the_ddim_repo_rule():
    # DDIM repo, skip_type "quad": int(x ** 2) for x in linspace(0, sqrt(0.8 T), N).
    assert sorted(space_timesteps(1000, "quad10")) == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    assert sorted(space_timesteps(1000, "quad5")) == [0, 50, 200, 450, 800]
    assert space_timesteps(1000, "quad1") == {0}
    for n in (2, 7, 20, 29):
        steps = sorted(space_timesteps(1000, f"quad{n}"))
        expected = [int(v) for v in np.linspace(0, np.sqrt(800.0), n) ** 2]
        assert steps == expected and len(steps) == n and steps[0] == 0 and steps[-1] == 800
    assert sorted(space_timesteps(50, "quad6")) == [0, 1, 6, 14, 25, 40]


@pytest.mark.parametrize("spec, match", [
    ("quad30", r"only 29 distinct steps out of 1000; use quad29 or smaller"),
    ("quad100", r"only 96 distinct .* use quad29"),
    ("quad5000", r"cannot give 5000 distinct .* use quad29"),
    ("quad0", ">= 1"),
    ("quadx", "quadN"),
])
def test_quad_grid_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


def test_quad_error_names_a_working_n():
    with pytest.raises(ValueError, match="use quad(\\d+)") as info:
        space_timesteps(200, "quad40")
    n = int(info.value.args[0].split("use quad")[1].split()[0])
    assert len(space_timesteps(200, f"quad{n}")) == n
