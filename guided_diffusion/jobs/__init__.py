"""Long jobs: settings in, files out, resumably, over one or more processes.

- ``sample``: the sampling job (npz + metadata), ``nll``: the bits/dim job.
- ``runner``: the one resumable-parts runner both jobs use (lock, parts, plan, rounds, stop at a boundary).
- ``parts``: resumable part files, the work plan and streaming assembly.
- ``control``: one writer per output (lock file), preemption at a batch boundary, the resume command.
- ``tuning``: successive-halving search over sampler settings for one checkpoint.
- ``figures``: PNG grids and the with/without-time-shift comparison figure.
"""
