"""The sampler: one loop over explicit (t, t_next) pairs and what it calls at each step.

- ``loop``: :class:`Sampler` and ``sample_loop_progressive``, the only loop over time.
- ``solvers``: the solver registry and each deterministic update as a pure step function.
- ``time_shift``: the Time-Shift rule of TS-DPM (which timestep a step targets).
- ``corrections``: epsilon scaling and DCW, pure functions of tensors.
- ``generate``: per-sample noise (same bits on every device) and batch generation.
- ``conditioning``: class labels, low-resolution inputs and classifier guidance.
- ``fast_path``: optional inference speed-ups (sdpa, autocast, channels_last, compile).

Nothing here knows about files, flags or processes.
"""
