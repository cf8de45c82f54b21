"""Test tool: run a sampling script, exiting hard (os._exit, like kill -9) after N part files.

    python tests/tools/exit_after_parts.py N scripts/image_sample.py <flags>
"""

import os
import runpy
import sys

from guided_diffusion import sample_parts


def main():
    limit, script, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    original = sample_parts.write_part
    written = [0]

    def write_part(*args, **kwargs):
        path = original(*args, **kwargs)
        written[0] += 1
        if written[0] >= limit:
            os._exit(137)
        return path

    sample_parts.write_part = write_part
    sys.argv = [script] + rest
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
