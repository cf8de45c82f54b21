"""User-facing error types: the bottom layer, imported by every module that raises one.

A user error is the user's input problem: the command prints one line naming the flag or file and
the fix, and exits with status 2 (:func:`guided_diffusion.cli.run_cli`).
"""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model flags."""


class NonFiniteSampleError(RuntimeError):
    """A sample came out NaN or infinite; nothing of its batch should be written."""


class ExplodedSampleError(NonFiniteSampleError):
    """A sample's state left every range data in [-1, 1] can reach (finite but exploded); nothing of
    its batch should be written (see ``guided_diffusion.sampler.generate.exploded_share``)."""


class OutputLockedError(RuntimeError):
    """Another live run holds the output's lock."""


class StopRun(Exception):
    """Another process of the job failed and reported it; this one stops quietly (exit status 2)."""


class Preempted(Exception):
    """The job stopped cleanly on a signal (SIGTERM / SIGINT); rerunning the same command resumes it.

    ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT); ``printed`` says
    the message was already written to stderr (by rank 0; it is empty on the other ranks).
    """

    def __init__(self, message, exit_code, printed=False):
        super().__init__(message)
        self.message = message
        self.exit_code = int(exit_code)
        self.printed = bool(printed)


def user_errors():
    """Exception types that are the user's input problems: one line on stderr, exit status 2."""
    return (CheckpointError, NonFiniteSampleError, OutputLockedError, ValueError, OSError)
