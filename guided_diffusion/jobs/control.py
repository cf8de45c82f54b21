"""Long jobs: one writer per output (a lock file), preemption at a batch boundary, the resume command.

Lock. A run that writes ``OUT.npz`` first creates ``OUT.npz.lock`` beside ``OUT.npz.parts/``
(rank 0 only, for the whole job), atomically: the JSON below is written to a temporary file and
hard-linked to the lock name (``os.link`` fails if the name exists; where hard links are not
supported, ``os.open(O_CREAT | O_EXCL)``), so two runs on one shared folder, even on two nodes,
cannot both hold it::

    {"host": "node7", "pid": 12345, "proc_start": 987654, "boot_id": "...",
     "started": "2026-05-09T07:35:25+00:00", "token": "<random hex>", "command": "python ..."}

``proc_start`` is the process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22,
None where /proc is missing) and ``boot_id`` the kernel's boot id, so a reused pid or a reboot is
recognised; ``started`` is the same start time as a local date (the time the lock was taken where
/proc is missing). A second run on the same output refuses with one line naming the holder (host, pid,
start time). A lock is *stale*, and taken over with a one-line warning, when

* same host: its pid is not alive, or now belongs to a process that started at another time
  (pid reuse), or the machine rebooted since (other boot id);
* another host: its modification time is older than :data:`STALE_AFTER_S` (300 s; environment
  variable ``GD_LOCK_STALE_SECONDS``). The holder refreshes it (``os.utime``) every
  :data:`HEARTBEAT_S` (30 s) from a background thread, however long a batch takes; the nodes'
  clocks must agree to well under the timeout (NTP).

The takeover itself is serialised by a second file, ``OUT.npz.lock.takeover`` (O_EXCL; one older
than 30 s is a leftover and removed), so two runs that both find a stale lock cannot both take it.
The lock is released (deleted, only if it still holds this run's token) on a normal return, on
errors and on preemption.

Preemption. Inside :func:`sampling_job` (and :class:`StopSignals`), SIGTERM and SIGINT do not kill
the process: they set a flag (and print one line), the batch in flight is finished and written,
and every rank stops at the same round boundary (the flag is summed over ranks with the round's
all_reduce). The job then raises :class:`~guided_diffusion.errors.Preempted`: rank 0 prints one
line with the command that resumes, the lock is released, and the scripts exit with status
128 + signal number (143 for SIGTERM, 130 for SIGINT). A second signal stops at once (finished
parts are still kept; the batch in flight is lost).
"""

import contextlib
import contextvars
import datetime
import functools
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import threading
import time

from .. import dist_util
from ..errors import Preempted
from ..errors import OutputLockedError  # noqa: F401 (raised here; defined with the other user errors)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
TAKEOVER_STALE_S = 30.0
UNREADABLE_STALE_S = 60.0
LOCK_SUFFIX = ".lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stale_after_s():
    """The heartbeat timeout for locks held on other hosts (GD_LOCK_STALE_SECONDS overrides it)."""
    try:
        return float(os.environ.get("GD_LOCK_STALE_SECONDS", STALE_AFTER_S))
    except ValueError:
        return STALE_AFTER_S


def lock_path_for(out_path):
    return out_path + LOCK_SUFFIX


def exit_code_for(signum):
    """The shell's convention: 128 + signal number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(signum)


def _say(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ process identity
def proc_start_ticks(pid):
    """Start time of process ``pid`` in clock ticks since boot (Linux /proc), or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
        return int(text[text.rindex(")") + 2 :].split()[19])  # field 22 ("starttime")
    except (OSError, ValueError, IndexError):
        return None


def process_start_time(pid):
    """Wall-clock start time of process ``pid`` (seconds since the epoch, from /proc), or None."""
    ticks = proc_start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_alive(pid):
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def hostname():
    return socket.gethostname()


def command_line():
    """This process's command line as typed (interpreter included)."""
    argv = list(getattr(sys, "orig_argv", None) or [os.path.basename(sys.executable)] + sys.argv)
    return shlex.join(argv)


def resume_command(world_size=1, replace=None):
    """The command that resumes this job: the same command line (and launcher, when known).

    :param replace: optional {flag: value}; each ``--flag``/``--flag=...`` is dropped and
        ``--flag value`` appended (e.g. ``--resume_checkpoint``).
    """
    argv = list(getattr(sys, "orig_argv", None) or [os.path.basename(sys.executable)] + sys.argv)
    for flag, value in (replace or {}).items():
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
                continue
            if a == flag:
                skip = True
                continue
            if a.startswith(flag + "="):
                continue
            out.append(a)
        argv = out + [flag, str(value)]
    cmd = shlex.join(argv)
    if world_size > 1:
        mpi = any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))
        cmd = f"mpiexec -n {world_size} {cmd}" if mpi else f"<the same launcher, {world_size} processes> {cmd}"
    return cmd


# ------------------------------------------------------------------ the lock
class OutputLock:
    """The lock file of one output (see the module docstring). Not re-entrant; one per run."""

    def __init__(self, out_path, heartbeat_s=HEARTBEAT_S, stale_s=None):
        self.out_path = out_path
        self.path = lock_path_for(out_path)
        self.heartbeat_s = float(heartbeat_s)
        self.stale_s = stale_after_s() if stale_s is None else float(stale_s)
        self.token = None
        self.lost = False
        self._stop = threading.Event()
        self._thread = None

    # -- reading
    def read(self):
        """(raw text, parsed dict or None, mtime), or None when there is no lock file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        return raw, info if isinstance(info, dict) else None, mtime

    def stale_reason(self, info, mtime, now=None):
        """Why the lock described by (info, mtime) is stale, or None while its holder may be alive."""
        age = (time.time() if now is None else now) - mtime
        if info is None:
            return f"unreadable lock file, {age:.0f} s old" if age > UNREADABLE_STALE_S else None
        if info.get("host") == hostname():
            pid = info.get("pid")
            if info.get("boot_id") and boot_id() and info["boot_id"] != boot_id():
                return f"host {info['host']} rebooted since it was taken"
            if not pid_alive(pid):
                return f"process {pid} on this host is gone"
            recorded, now_start = info.get("proc_start"), proc_start_ticks(pid)
            if recorded is not None and now_start is not None and int(recorded) != now_start:
                return f"pid {pid} now belongs to another process (pid reused)"
            return None
        if age > self.stale_s:
            return f"no heartbeat from host {info.get('host')} for {age:.0f} s (> {self.stale_s:.0f} s)"
        return None

    def describe(self, info):
        if info is None:
            return f"an unknown run (unreadable {self.path}, being created?)"
        return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')} "
                f"(lock {self.path})")

    # -- taking
    def _content(self):
        pid = os.getpid()
        return json.dumps({
            "host": hostname(),
            "pid": pid,
            "proc_start": proc_start_ticks(pid),
            "boot_id": boot_id(),
            "started": datetime.datetime.fromtimestamp(process_start_time(pid) or time.time()).astimezone()
            .isoformat(timespec="seconds"),
            "token": self.token,
            "command": command_line(),
        }, indent=1) + "\n"

    def _try_create(self):
        """Create the lock file atomically with complete content; False if it exists."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        data = self._content().encode()
        tmp = f"{self.path}.{hostname()}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system
                pass
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def _take_over(self, raw):
        """Remove the stale lock whose content is ``raw`` (serialised by the takeover file)."""
        guard = self.path + ".takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - os.stat(guard).st_mtime > TAKEOVER_STALE_S:
                    os.remove(guard)  # left by a run killed during a takeover
            return False
        try:
            os.close(fd)
            current = self.read()
            if current is not None and current[0] == raw:
                os.remove(self.path)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.remove(guard)

    def acquire(self, attempts=5):
        """Take the lock, taking over a stale one; returns warning lines.

        :raises OutputLockedError: a live run holds it (one line naming that run).
        """
        self.token = secrets.token_hex(8)
        warnings = []
        for _ in range(attempts):
            if self._try_create():
                self._start_heartbeat()
                return warnings
            current = self.read()
            if current is None:
                continue  # released meanwhile
            raw, info, mtime = current
            reason = self.stale_reason(info, mtime)
            if reason is None:
                raise OutputLockedError(
                    f"{self.out_path} is being written by another run: {self.describe(info)}; "
                    "wait for it or stop it (a lock left by a killed run is taken over automatically)"
                )
            if self._take_over(raw):
                warnings.append(f"took over the stale lock of {self.describe(info)}: {reason}")
            else:
                time.sleep(0.05)
        raise OutputLockedError(f"{self.out_path}: could not take {self.path} (another run is taking it over)")

    # -- holding
    def _start_heartbeat(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            self.refresh()

    def owned(self):
        current = self.read()
        return current is not None and current[1] is not None and current[1].get("token") == self.token

    def refresh(self):
        """Touch the lock (the heartbeat other hosts look at); notes when it is no longer ours."""
        if self.token is None or self.lost:
            return
        try:
            if self.owned():
                os.utime(self.path)
            else:
                self.lost = True
        except OSError:
            pass  # a transient error of a shared file system: try again next beat

    def release(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self.token is not None and not self.lost:
            with contextlib.suppress(OSError):
                if self.owned():
                    os.remove(self.path)
        self.token = None


# ------------------------------------------------------------------ signals
class StopSignals:
    """Context manager: SIGTERM / SIGINT set a flag instead of stopping the process at once.

    The first signal prints one line and is remembered (:meth:`counts`); a second one restores
    the previous handlers and stops at once (KeyboardInterrupt for SIGINT, SystemExit(128 + n)
    otherwise). Handlers are installed only in the main thread (elsewhere this does nothing).

    Nested: when the handler this one replaced belongs to an outer :class:`StopSignals` (e.g. a tuner
    around its sampling runs), a signal received here is passed on to the outer one on exit, so a
    run that finishes anyway (its last batch was in flight) does not swallow the request to stop.
    """

    def __init__(self, signals=STOP_SIGNALS, what="stopping at the next batch boundary"):
        self.signals = tuple(signals)
        self.what = what
        self.received = []
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                try:
                    self._previous[s] = signal.signal(s, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc):
        self.restore()
        return False

    def restore(self):
        for s, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, handler)
            outer = getattr(handler, "__self__", None)
            if isinstance(outer, StopSignals) and s in self.received and s not in outer.received:
                outer.received.append(s)
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received:
            self.restore()
            os.write(2, f"received {name} again: stopping now\n".encode())
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(exit_code_for(signum))
        self.received.append(signum)
        os.write(2, f"received {name}: {self.what} (send it again to stop at once)\n".encode())

    def counts(self):
        """[SIGTERM received?, SIGINT received?] as ints (summed over ranks by the caller)."""
        return [int(signal.SIGTERM in self.received), int(signal.SIGINT in self.received)]


def signal_from_counts(counts):
    """The signal to report from summed :meth:`StopSignals.counts` (SIGTERM wins), or None."""
    term, intr = counts[:2]
    if term:
        return signal.SIGTERM
    if intr:
        return signal.SIGINT
    return None


def stop_requested_anywhere(signals):
    """Collective: the signal any rank received (SIGTERM first), or None."""
    return signal_from_counts(dist_util.all_reduce_ints(signals.counts()))


def preempt(signum, message):
    """Collective: rank 0 prints ``message`` (one line), every rank waits, then raises Preempted.

    Rank 0 prints before the barrier, so a launcher that ends the job when the first rank exits
    cannot cut the line off.
    """
    rank = dist_util.get_rank()
    prog = os.path.basename(sys.argv[0]) or "guided_diffusion"
    if rank == 0:
        _say(f"{prog}: {message}")
    dist_util.barrier()
    raise Preempted(message if rank == 0 else "", exit_code_for(signum), printed=True)


# ------------------------------------------------------------------ a sampling job
class SamplingGuard:
    """The reliability side of one :func:`~guided_diffusion.jobs.sample.run_sampling` call."""

    def __init__(self):
        self.lock = None
        self.signals = StopSignals()

    def lock_output(self, out_path):
        """Collective: rank 0 takes ``OUT.npz.lock`` for the job (one-line refusal if held)."""

        def take():
            self.lock = OutputLock(out_path)
            return self.lock.acquire()

        for line in dist_util.on_rank0(take) or []:
            if dist_util.get_rank() == 0:
                _say(f"warning: {line}")

    def signal_counts(self):
        """This rank's [SIGTERM, SIGINT] flags, to be summed with the round's all_reduce."""
        return self.signals.counts()

    def stop_if_requested(self, counts, *, done, num_samples, parts_dir, bar=None):
        """Collective (every rank calls it after the same all_reduce): stop if any rank got a signal.

        When every sample is already made (``done >= num_samples``) it does not stop: the job goes on
        to write its outputs, which takes seconds, rather than leave a finished run to be resumed.
        """
        signum = signal_from_counts(counts)
        if signum is None or done >= num_samples:
            return
        if bar is not None:
            bar.close()
        self.release()
        name = signal.Signals(signum).name
        message = (f"stopped by {name} at a batch boundary: {done} of {num_samples} samples are kept in "
                   f"{parts_dir}; run the same command to resume: "
                   f"{resume_command(dist_util.get_world_size())}")
        preempt(signum, message)

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


_CURRENT = contextvars.ContextVar("sampling_guard", default=None)


def current():
    """The :class:`SamplingGuard` of the running :func:`sampling_job` call (a no-op one outside)."""
    guard = _CURRENT.get()
    return guard if guard is not None else SamplingGuard()


def sampling_job(fn):
    """Decorator: run ``fn`` with a :class:`SamplingGuard` (signals caught, the lock released at the end)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        guard = SamplingGuard()
        token = _CURRENT.set(guard)
        try:
            with guard.signals:
                return fn(*args, **kwargs)
        finally:
            guard.release()
            _CURRENT.reset(token)

    return wrapper
