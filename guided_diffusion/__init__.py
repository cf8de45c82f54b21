"""ADM (guided-diffusion) with the Time-Shift sampler of TS-DPM (ICLR 2024)."""
