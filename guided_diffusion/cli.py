"""The command-line runner every script calls: the top layer of the package."""

import os
import sys

from .errors import Preempted, StopRun, user_errors


def run_cli(main, argv=None, errors=None):
    """Run ``main(argv)``; user errors become one line on stderr and exit status 2.

    A process stopped because another process failed (:class:`StopRun`) exits with status 2
    silently: the failing process prints the one line. A job stopped by a signal
    (:class:`Preempted`) exits with its ``exit_code`` (143 for SIGTERM, 130 for SIGINT).
    Before ``main`` it sets torch's CPU thread count (``dist_util.set_cpu_threads``: ``OMP_NUM_THREADS``
    or ``GD_NUM_THREADS`` when set, else a default from the free cores and the local processes).
    """
    errors = user_errors() if errors is None else errors
    prog = os.path.basename(sys.argv[0]) or "guided_diffusion"
    try:
        from . import dist_util

        dist_util.set_cpu_threads()  # the CPU thread default (see dist_util.default_cpu_threads)
        return main(argv)
    except StopRun:
        sys.exit(2)
    except Preempted as exc:
        if exc.message and not exc.printed:
            sys.stderr.write(f"{prog}: {exc.message}\n")
        sys.exit(exc.exit_code)
    except errors as exc:
        message = " ".join(str(exc).split("\n"))
        sys.stderr.write(f"{prog}: error: {message}\n")
        sys.exit(2)
