"""From the grids bench's tuner records to the bench's settings and the window-search table.

Reads the ``tune_sampler.py --json`` records of ``tools/grids_bench_tune.sh`` (one per solver x grid x
step count) and prints

* ``--ts_settings``: per grid template and sampler, the window of the best time-shift candidate by KID
  (the tuner's "ts" family: the shift's window chosen by the tuner on that grid, whether or not it
  beats plain);
* ``--extra_cells``: the same for grids given as explicit ``t:`` lists, and every record's chosen
  setting when it carries a correction (DCW) -- the best combination the tuner found;
* with ``--markdown FILE``, a table of every candidate's KID and FID at the search budget (written
  atomically).

Usage: python tools/grids_bench_settings.py runs/grids_tune/*.json [--markdown docs/results/grids/search.md]
"""

import argparse
import json

from guided_diffusion.io_util import write_text_atomic
from guided_diffusion.jobs.cells import grid_template

OPT_PREFIX = "file:docs/grids/demo_fmnist32_ddim_"


def template_of(grid, steps):
    """The fid_table --grids template of a record's grid (None for an explicit t: list)."""
    if grid.startswith("t:"):
        return None
    if grid.startswith(OPT_PREFIX):
        return OPT_PREFIX + "{N}.json"
    return grid_template(grid, steps)


def steps_of(grid):
    if grid.startswith("t:"):
        return len(grid[2:].split(","))
    if grid.startswith(OPT_PREFIX):
        return int(grid[len(OPT_PREFIX):-len(".json")])
    return int("".join(c for c in grid if c.isdigit()))


def fmt_cell(ev):
    return f"{ev['kid_mean'] * 1e3:.2f} / {ev['fid']:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="+", help="tune_sampler.py --json files")
    p.add_argument("--markdown", default="", help="also write the window-search table here")
    args = p.parse_args(argv)
    ts_items, extra, rows = [], [], []
    for path in sorted(args.records):
        rec = json.load(open(path))
        grid, solver = rec["timestep_respacing"], rec["solver"]
        steps = steps_of(grid)
        ts = [e for e in rec["evaluations"] if e["family"] == "ts"]
        best = min(ts, key=lambda e: (e["kid_mean"], e["fid"]))
        w, c = best["setting"]["window"], best["setting"]["cutoff"]
        tmpl = template_of(grid, steps)
        sampler = f"ts-{solver}"
        if tmpl is None:
            extra.append(f"{solver}:{steps}:grid={grid}")
            extra.append(f"{sampler}:{steps}:{w}:{c}:grid={grid}")
        else:
            ts_items.append(f"{steps}:{w}:{c}:grid={tmpl}:sampler={sampler}")
        chosen = rec["chosen"]["setting"]
        if chosen.get("dcw_low"):
            name = sampler if chosen["window"] else solver
            head = f"{name}:{steps}" + (f":{chosen['window']}:{chosen['cutoff']}" if chosen["window"] else "")
            extra.append(f"{head}:dcw_low={chosen['dcw_low']:g}:grid={grid}")
        plain = next(e for e in rec["evaluations"] if e["family"] == "plain")
        by_label = {e["label"]: e for e in rec["evaluations"]}
        rows.append((solver, grid, steps, plain, by_label, best, f"{rec['chosen']['label']} ({rec['verdict']})"))
    print("--ts_settings '" + ",".join(ts_items) + "'")
    print("--extra_cells '" + ",".join(dict.fromkeys(extra)) + "'")
    if args.markdown:
        labels = []
        for r in rows:
            for label in r[4]:
                if label not in labels and label != "plain":
                    labels.append(label)
        ts_labels = sorted((lab for lab in labels if lab.startswith("TS w") and "+" not in lab),
                           key=lambda lab: int(lab.split()[1][1:]))
        lines = [
            "Window search of the grids bench: `tune_sampler.py` at one rung of 250 samples (seed 0), adm rule, "
            "cutoff 300, KID x10^3 / FID per candidate (records: `runs/grids_tune/*.json`, written by "
            "`tools/grids_bench_tune.sh`; this table by `tools/grids_bench_settings.py`). FID at 250 samples is "
            "biased upward: compare within a row. Bold: the window the bench uses with the shift on that grid.",
            "",
            "| solver | grid | steps | plain | " + " | ".join(lab.replace(" c300 adm", "") for lab in ts_labels)
            + " | DCW -0.05 | DCW +0.05 | tuner's choice (its verdict against plain) |",
            "|---" * (len(ts_labels) + 7) + "|",
        ]
        for solver, grid, steps, plain, by_label, best, chosen in sorted(rows, key=lambda r: (r[0], r[2], r[1])):
            cells = []
            for lab in ts_labels:
                ev = by_label.get(lab)
                text = fmt_cell(ev) if ev else "-"
                cells.append(f"**{text}**" if ev is best else text)
            dcw = [fmt_cell(by_label[lab]) if lab in by_label else "-" for lab in ("DCW -0.05", "DCW 0.05")]
            shown = grid if not grid.startswith("t:") else f"`{grid}`"
            lines.append(f"| {solver} | {shown} | {steps} | {fmt_cell(plain)} | " + " | ".join(cells) + " | "
                         + " | ".join(dcw) + f" | {chosen} |")
        write_text_atomic(args.markdown, "\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
