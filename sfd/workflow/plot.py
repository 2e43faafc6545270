"""`sfd plot`: the paper's figures from a results CSV of `sfd table`.

* `delta_t`: FID against the semantic lead Δt (the paper's Δt ablation);
* `step`:    FID against training iterations on log-log axes (the paper's Figure 1(b)), one
             series per model, plus the paper's series (SFD and the baselines it quotes).
Measured FID-50K shares the axis with the paper's. Toy-FID does not measure the same thing, so in
a toy figure the mirrored paper values, if any, go on a separate right-hand axis.
"""

import csv
import logging
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sfd.io import atomic_path  # noqa: E402
from sfd.workflow.matrix import load  # noqa: E402

log = logging.getLogger("sfd.plots")

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("name", "tables.{table}.plot")

_SUFFIX = {"K": 1e3, "M": 1e6}


def iterations(text: str) -> float:
    """'400K' -> 400000.0, '4M' -> 4e6, '1200' -> 1200.0."""
    text = str(text).strip()
    return float(text[:-1]) * _SUFFIX[text[-1]] if text[-1:] in _SUFFIX else float(text)


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows, x_key, y_key, group_key, default):
    """Points (x, y) per group, sorted by x; rows lacking either value are left out."""
    out = {}
    for row in rows:
        if row.get(x_key, "") == "" or row.get(y_key, "") == "":
            continue
        x = iterations(row[x_key]) if x_key in ("step", "paper_iter") else float(row[x_key])
        name = (row[group_key] if group_key else "") or default
        out.setdefault(name, []).append((x, float(row[y_key])))
    return {name: sorted(points) for name, points in out.items()}


def draw(rows: list[dict], kind: str, title: str, out: Path) -> None:
    measured = [r for r in rows if r["kind"] == "measured"]
    toy = any("toy_fid" in r for r in rows)
    y_key, label = ("toy_fid", "toy-FID (ours, toy detector)") if toy else ("ours_fid", "FID (ours)")
    x_key, paper_x = ("delta_t", "paper_delta_t") if kind == "delta_t" else ("step", "paper_iter")

    # Each Δt is its own model, so the Δt figure joins all runs; the convergence figure one per model.
    group = "model" if kind == "step" else None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for name, points in _series(measured, x_key, y_key, group, "SFD").items():
        ax.plot(*zip(*points), "o-", color=next(colors), label=f"{name} ({label})")
    paper = _series(rows, paper_x, "paper_fid", "paper_method", "SFD")
    paper_ax = ax.twinx() if toy and paper else ax
    for name, points in paper.items():
        paper_ax.plot(*zip(*points), "s--", color=next(colors), alpha=0.6, label=f"paper: {name}")
    if kind == "step":
        for a in dict.fromkeys((ax, paper_ax)):
            a.set_yscale("log")
            a.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            a.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xscale("log")
    ax.set_xlabel("Δt (semantic lead)" if kind == "delta_t" else "training iterations")
    ax.set_ylabel(label)
    if paper_ax is not ax:
        paper_ax.set_ylabel("paper FID-50K (not comparable)")
    handles = [h for a in dict.fromkeys((ax, paper_ax)) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (tables.<table>.plot)")
    parser.add_argument("--table", required=True, help="a key of `tables` with plot: delta_t | step")
    parser.add_argument("--csv", required=True, type=Path, help="its results CSV (sfd table)")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")


def main(args) -> int:
    from sfd.config import ConfigError

    exp = load(args.config, __name__, table=args.table)
    kind = exp.table(args.table)["plot"]
    if kind == "none":
        raise ConfigError(f"{args.config}: tables.{args.table}.plot is none: nothing to draw")
    rows = read_rows(args.csv)
    draw(rows, kind, f"{exp.name}: {args.table}", args.out)
    log.info("wrote %s (%d measured points)", args.out, sum(r["kind"] == "measured" for r in rows))
    return 0
