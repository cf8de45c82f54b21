"""A small key-value logger for training (upstream-style API, much smaller).

Usage (scripts only; library code just calls the module functions)::

    from guided_diffusion import logger
    logger.configure(out_dir, rank=rank)      # rank 0: stdout + log.txt + progress.csv
    logger.logkv("step", 10); logger.logkv_mean("loss", 0.1)
    logger.dumpkvs()                          # one table on stdout, one row in progress.csv
    logger.log("text")                        # stdout + log.txt

Until ``configure`` is called the module-level logger writes to stdout only (this default is the
only import-time state). Ranks other than 0 write nothing, but still accumulate key-values, so
``dumpkvs(reduce_fn)`` can average them over ranks: ``reduce_fn`` maps this rank's
``{key: (sum, count)}`` to the list of every rank's such dict (e.g. ``dist_util.all_gather_object``).
"""

import csv
import datetime
import io
import os
import sys

from . import io_util

__all__ = ["Logger", "configure", "get_current", "get_dir", "log", "logkv", "logkv_mean", "dumpkvs", "close"]


def _fmt(value):
    if isinstance(value, float):
        return f"{value:<8.3g}"
    return str(value)


class _StdoutFormat:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def writekvs(self, kvs):
        if not kvs:
            return
        rows = [(str(k), _fmt(v)) for k, v in kvs.items()]
        kw = max(len(k) for k, _ in rows)
        vw = max(len(v) for _, v in rows)
        bar = "-" * (kw + vw + 7)
        lines = [bar] + [f"| {k.ljust(kw)} | {v.ljust(vw)} |" for k, v in rows] + [bar]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def writetext(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        pass


class _TextFormat(_StdoutFormat):
    """log.txt, appended to; on a cloud path an :class:`~guided_diffusion.io_util.CloudText` (written
    whole at most every 30 s and on close: object stores cannot append)."""

    def __init__(self, path):
        super().__init__(io_util.CloudText(path) if io_util.via_blobfile(path) else open(path, "a", encoding="utf-8"))

    def close(self):
        self.stream.close()


class _CSVFormat:
    """progress.csv; a new key rewrites the file with the widened header (old rows padded). On a cloud
    path the text lives in an :class:`~guided_diffusion.io_util.CloudText` (uploaded whole, throttled)."""

    def __init__(self, path):
        self.path = path
        self.keys = []
        self.cloud = io_util.CloudText(path) if io_util.via_blobfile(path) else None
        text = self._read()
        if text:  # appending after a resume
            self.keys = list(next(csv.reader(io.StringIO(text)), []))

    def _read(self):
        if self.cloud is not None:
            return self.cloud.text
        if not os.path.exists(self.path):
            return ""
        with open(self.path, newline="", encoding="utf-8") as f:
            return f.read()

    def _write(self, text, append):
        if self.cloud is not None:
            self.cloud.write(text) if append else self.cloud.rewrite(text)
            self.cloud.flush()
            return
        with open(self.path, "a" if append else "w", newline="", encoding="utf-8") as f:
            f.write(text)

    def writekvs(self, kvs):
        new = [k for k in kvs if k not in self.keys]
        if new:
            rows = list(csv.DictReader(io.StringIO(self._read())))
            self.keys.extend(new)
            buf = io.StringIO(newline="")
            writer = csv.DictWriter(buf, fieldnames=self.keys)
            writer.writeheader()
            writer.writerows(rows)
            self._write(buf.getvalue(), append=False)
        buf = io.StringIO(newline="")
        csv.DictWriter(buf, fieldnames=self.keys).writerow({k: kvs.get(k, "") for k in self.keys})
        self._write(buf.getvalue(), append=True)

    def writetext(self, text):
        pass

    def close(self):
        if self.cloud is not None:
            self.cloud.close()


class Logger:
    """Accumulates key-values for one interval and writes them to its outputs."""

    def __init__(self, dir=None, outputs=None, rank=0):
        self.dir = dir
        self.rank = rank
        self.outputs = list(outputs) if outputs is not None else [_StdoutFormat()]
        self.values = {}  # logkv: last value wins
        self.sums = {}  # logkv_mean: key -> (sum, count)

    def logkv(self, key, value):
        self.values[key] = value

    def logkv_mean(self, key, value):
        s, n = self.sums.get(key, (0.0, 0))
        self.sums[key] = (s + float(value), n + 1)

    def dumpkvs(self, reduce_fn=None):
        """Write this interval's values (means for ``logkv_mean`` keys), then clear them.

        With ``reduce_fn`` the means are taken over every rank's accumulated values.
        Returns the dict written.
        """
        parts = reduce_fn(dict(self.sums)) if reduce_fn is not None else [self.sums]
        total = {}
        for part in parts:
            for k, (s, n) in part.items():
                s0, n0 = total.get(k, (0.0, 0))
                total[k] = (s0 + s, n0 + n)
        out = {k: s / n for k, (s, n) in total.items() if n}
        out.update(self.values)
        out = dict(sorted(out.items()))
        for fmt in self.outputs:
            fmt.writekvs(out)
        self.values.clear()
        self.sums.clear()
        return out

    def log(self, *args):
        text = " ".join(str(a) for a in args)
        for fmt in self.outputs:
            fmt.writetext(text)

    def close(self):
        for fmt in self.outputs:
            fmt.close()
        self.outputs = []


_CURRENT = Logger()  # the default: stdout only


def configure(dir=None, rank=0, format_strs=("stdout", "log", "csv")):
    """Replace the current logger. Rank 0 writes ``format_strs`` (log.txt / progress.csv in
    ``dir`` when ``dir`` is given); other ranks write nothing."""
    global _CURRENT
    _CURRENT.close()
    outputs = []
    if rank == 0:
        if dir:
            io_util.makedirs(dir)
        for name in format_strs:
            if name == "stdout":
                outputs.append(_StdoutFormat())
            elif name == "log" and dir:
                outputs.append(_TextFormat(io_util.join(dir, "log.txt")))
            elif name == "csv" and dir:
                outputs.append(_CSVFormat(io_util.join(dir, "progress.csv")))
            elif name not in ("log", "csv"):
                raise ValueError(f"unknown log format {name!r}: use stdout, log or csv")
    _CURRENT = Logger(dir=dir, outputs=outputs, rank=rank)
    _CURRENT.log(f"Logging to {dir or 'stdout'} at {datetime.datetime.now().isoformat(timespec='seconds')}")
    return _CURRENT


def get_current():
    return _CURRENT


def get_dir():
    return _CURRENT.dir


def logkv(key, value):
    _CURRENT.logkv(key, value)


def logkv_mean(key, value):
    _CURRENT.logkv_mean(key, value)


def dumpkvs(reduce_fn=None):
    return _CURRENT.dumpkvs(reduce_fn)


def log(*args):
    _CURRENT.log(*args)


def close():
    """Close the current logger's files and return to the stdout-only default."""
    global _CURRENT
    _CURRENT.close()
    _CURRENT = Logger()
