"""The report writer of a bench: a Markdown table and a FID-vs-NFE plot from scored cells.

Input: :class:`~guided_diffusion.jobs.bench.BenchCell` entries (a typed cell, its row, its nominal
steps, its NFE, whether it is a main-table or a search cell) and their scores from the
:class:`~guided_diffusion.jobs.cells.ScoreCache` (FID with its bootstrap sd, KID with its standard
error over subsets). Each table cell reads ``FID ± sd / KID x10^3 ± se``; "(better)" / "(worse)"
is added only when the FID gap to the row's plain counterpart (same solver, grid and steps, no shift,
no corrections) exceeds 2 x the two bootstrap sds combined in quadrature:
``|FID - FID_plain| > 2 sqrt(sd^2 + sd_plain^2)``. The header states the date, the commit, the
command and the machine (its CPU model and core count, and its GPU if one was used).

Published numbers (:func:`published`) come from ``guided_diffusion/assets/published.json``, each set
with its source and protocol.
"""

import datetime
import json
import math
import os
import subprocess

from ..io_util import save_figure_atomic, write_text_atomic
from ..settings import format_number
from .bench import sampler_label

PUBLISHED_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                              "published.json")


def published(name=None):
    """The published sets: {name: {"note", "source", "protocol", "fid": {sampler: {steps (int): fid}}}},
    or one set by ``name`` ("none" / None: an empty dict)."""
    with open(PUBLISHED_PATH) as f:
        sets = json.load(f)
    for entry in sets.values():
        entry["fid"] = {s: {int(k): float(v) for k, v in row.items()} for s, row in entry["fid"].items()}
    if name is None:
        return sets
    return sets.get(name, {})


# ------------------------------------------------------------------ provenance
def machine_description():
    """The hardware in words, e.g. "a 2-core AMD EPYC CPU" (model name and core count from /proc/cpuinfo;
    ``os.cpu_count`` where it is missing), plus "and an NVIDIA H200 GPU" when CUDA is available."""
    model, cores = "", 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("processor"):
                    cores += 1
    except OSError:
        pass
    cores = cores or os.cpu_count() or 1
    text = f"a {cores}-core {model or 'unknown'} CPU".replace(" CPU CPU", " CPU")
    try:
        import torch

        if torch.cuda.is_available():
            text += f" and an {torch.cuda.get_device_name(0)} GPU"
    except Exception:  # noqa: BLE001 (a description only)
        pass
    return text


def git_commit(root=None):
    """The short commit hash of the checkout (with "+changes" when the tree differs), or "unknown"."""
    root = root or os.path.dirname(PUBLISHED_PATH)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+changes" if dirty else "")) if head else "unknown"


def provenance(command):
    """{"date", "commit", "command", "machine"} of a report made now."""
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                commit=git_commit(), command=command, machine=machine_description())


# ------------------------------------------------------------------ table text
def compare(r, base):
    """' (better)' / ' (worse)' when the FID gap exceeds 2 x the combined bootstrap sd, else ''."""
    if not r or not base or r.get("fid_sd") is None or base.get("fid_sd") is None:
        return ""
    gap = r["fid"] - base["fid"]
    bound = 2 * math.hypot(r["fid_sd"], base["fid_sd"])
    if abs(gap) <= bound:
        return ""
    return " (better)" if gap < 0 else " (worse)"


def format_score(r, base=None):
    """``FID ± sd / KID x10^3 ± se`` (each part when known) and the comparison with ``base``; "-" if none."""
    if not r:
        return "-"
    text = f"{r['fid']:.2f}"
    if r.get("fid_sd") is not None:
        text += f" ± {r['fid_sd']:.2f}"
    if r.get("kid_mean") is not None:
        text += f" / KID {1e3 * r['kid_mean']:.2f} ± {1e3 * (r.get('kid_se') or 0):.2f}"
    return text + compare(r, base)


def baseline_of(entry, entries):
    """The row's plain counterpart of ``entry`` (same solver, grid and steps; no shift, no corrections), or
    None for a plain entry or when the bench has none."""
    plain = entry.cell.plain()
    if plain == entry.cell:
        return None
    return next((e for e in entries if e.cell == plain), None)


def row_label(entry):
    label = sampler_label(entry.sampler)
    return f"{label}, {entry.template}" if entry.template else label


def render_markdown(entries, results, *, num_samples, reference, provenance_info, published_set=None):
    """The bench's Markdown: a header (protocol, provenance), the main table (rows x step counts), then the
    search cells. ``results``: {entry.key: score dict}."""
    pub = published_set or {}
    main = [e for e in entries if e.main]
    steps_list = sorted({e.steps for e in main})
    p = provenance_info
    lines = [
        f"Generated {p['date']} at commit {p['commit']} on {p['machine']} by:",
        "",
        f"    {p['command']}",
        "",
        f"FID ± bootstrap sd / KID x10^3 ± standard error ({num_samples} samples per cell, same seeds in "
        f"every cell, reference {os.path.basename(reference) if reference else '-'}). (better)/(worse): the FID "
        "differs from the plain sampler (same solver, grid and steps, no shift, no corrections) by more than 2 x "
        "the combined bootstrap sd; the bootstrap sd covers only the sample side, and cells share seeds, so this "
        "is a rough guide. KID's ± is the standard error over KID's random subsets: when a cell has no more "
        "samples than the subset size (1,000), every subset holds all its samples and the ± reflects only the "
        "reference side, so it understates the sampling noise; judge gaps by the FID sd.",
        "",
    ]
    if pub:
        lines += [f"In brackets: published, {pub['note']} ({pub['source']}).", ""]
    lines += ["| sampler | " + " | ".join(f"{s} steps" for s in steps_list) + " |",
              "|---|" + "---|" * len(steps_list)]
    for row in dict.fromkeys(e.row for e in main):
        cells = {e.steps: e for e in main if e.row == row}
        first = next(iter(cells.values()))
        texts = []
        for s in steps_list:
            e = cells.get(s)
            if e is None:
                texts.append("-")
                continue
            base = baseline_of(e, entries)
            text = format_score(results.get(e.key), results.get(base.key) if base else None)
            if e.nfe != e.steps:
                text += f" (NFE {e.nfe})"
            if e.cell.has_ts:
                text += f" (w{e.cell.window}, c{e.cell.cutoff})"
            if not e.template and s in pub.get("fid", {}).get(e.sampler, {}):
                text += f" [{pub['fid'][e.sampler][s]:.2f}]"
            texts.append(text)
        lines.append(f"| {row_label(first)} | " + " | ".join(texts) + " |")
    extra = [e for e in entries if not e.main]
    if extra:
        lines += ["", "Search cells (and the main-table cells they vary):", "",
                  "| sampler | steps | NFE | window | cutoff | corrections | FID ± sd / KID x10^3 ± se |",
                  "|---|---|---|---|---|---|---|"]
        shown = extra + [e for e in main if any(x.steps == e.steps for x in extra)]
        for e in sorted(shown, key=lambda e: (e.steps, e.sampler, e.cell.window, e.key)):
            base = baseline_of(e, entries)
            text = format_score(results.get(e.key), results.get(base.key) if base else None)
            c = e.cell
            corr = ", ".join(f"{k}={format_number(getattr(c, k))}" for k, off in
                             (("eps_scale", 1.0), ("eps_scale_k", 0.0), ("dcw_low", 0.0), ("dcw_high", 0.0))
                             if getattr(c, k) != off) or "-"
            lines.append(f"| {row_label(e)} | {e.steps} | {e.nfe} | {c.window if c.has_ts else '-'} | "
                         f"{c.cutoff if c.has_ts else '-'} | {corr} | {text} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plot
def plot_fid_vs_nfe(entries, results, path, by="solver"):
    """FID (± bootstrap sd) against NFE of the main-table cells, one line per row, written atomically to
    ``path``. ``by``: "solver" (one colour per solver and grid: plain dashed, shifted solid) or "grid"
    (one colour per grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    main = [e for e in entries if e.main]
    rows = list(dict.fromkeys(e.row for e in main))

    def family(e):
        return (e.cell.solver, e.grid_kind) if by == "solver" else e.grid_kind

    first = {row: next(e for e in main if e.row == row) for row in rows}
    families = list(dict.fromkeys(family(first[r]) for r in rows))

    def shape(e):  # the other attribute as the marker, so rows of one colour stay apart at one step count
        return e.grid_kind if by == "solver" else e.cell.solver

    shapes = list(dict.fromkeys(shape(first[r]) for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    palette = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    for row in rows:
        pts = sorted((e.nfe, results[e.key]["fid"], results[e.key].get("fid_sd") or 0) for e in main
                     if e.row == row and e.key in results)
        if not pts:
            continue
        e = first[row]
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="osD^v<>ph"[shapes.index(shape(e)) % 9], markersize=5,
                    capsize=2, label=row_label(e), color=palette(families.index(family(e)) % palette.N),
                    linestyle="-" if e.cell.has_ts else "--", alpha=1.0 if e.cell.has_ts else 0.8)
    ax.set_xscale("log")
    nfes = sorted({e.nfe for e in main if e.key in results})
    if nfes:  # label the NFEs measured, in plain numbers (log-axis defaults read 2x10^1, 2.02x10^1, ...)
        ax.set_xticks(nfes)
        ax.set_xticklabels([str(n) for n in nfes], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel("FID (± bootstrap sd)")
    what = "solver and grid" if by == "solver" else "grid"
    other = "grid" if by == "solver" else "solver"
    ax.set_title(f"one colour per {what}, one marker per {other};\ndashed: plain sampler, solid: with the time "
                 "shift", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(path, fig, bbox_inches="tight")  # the legend stands outside the axes
    plt.close(fig)


def write_report(table_dir, entries, results, **kw):
    """``table.md`` and ``fid_vs_nfe.png`` in ``table_dir`` (see :func:`render_markdown`); returns the text."""
    by = kw.pop("plot_by", "solver")
    text = render_markdown(entries, results, **kw)
    write_text_atomic(os.path.join(table_dir, "table.md"), text)
    plot_fid_vs_nfe(entries, results, os.path.join(table_dir, "fid_vs_nfe.png"), by=by)
    return text
