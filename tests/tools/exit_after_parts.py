"""Test tool: run a sampling (or bits/dim) script, exiting hard (os._exit, like kill -9) after N part files.

    python tests/tools/exit_after_parts.py N scripts/image_sample.py <flags>
"""

import os
import runpy
import sys

from guided_diffusion.jobs import nll as nll_run

from guided_diffusion.jobs import parts as sample_parts


def _exit_after(module, limit, written):
    original = module.write_part

    def write_part(*args, **kwargs):
        path = original(*args, **kwargs)
        written[0] += 1
        if written[0] >= limit:
            os._exit(137)
        return path

    module.write_part = write_part


def main():
    limit, script, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    written = [0]
    _exit_after(sample_parts, limit, written)  # image_sample.py, classifier_sample.py, super_res_sample.py
    _exit_after(nll_run, limit, written)  # image_nll.py
    sys.argv = [script] + rest
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
