"""Test tool: run a sampling script, pausing before this process writes its Nth part (batch in flight).

    PAUSE_DIR=DIR [PAUSE_RANK=R] python tests/tools/pause_before_part.py N scripts/image_sample.py <flags>

Before writing its Nth part file, the process (only rank R when PAUSE_RANK is set) writes its pid
to DIR/ready.<rank>, then waits until DIR/go exists (60 s at most), then writes the part and
carries on. A test sends a signal while the process waits, then creates DIR/go.
"""

import os
import runpy
import sys
import time

from guided_diffusion.jobs import parts as sample_parts


def _rank():
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def main():
    limit, script, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    folder, rank = os.environ["PAUSE_DIR"], _rank()
    only = os.environ.get("PAUSE_RANK")
    original = sample_parts.write_part
    count = [0]

    def write_part(*args, **kwargs):
        count[0] += 1
        if count[0] == limit and (only is None or int(only) == rank):
            ready = os.path.join(folder, f"ready.{rank}")
            with open(ready + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(ready + ".tmp", ready)
            deadline = time.time() + 60
            while not os.path.exists(os.path.join(folder, "go")) and time.time() < deadline:
                time.sleep(0.02)
        return original(*args, **kwargs)

    sample_parts.write_part = write_part
    sys.argv = [script] + rest
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
