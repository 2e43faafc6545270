"""`sfd replication-report`: the miniature replication's numbers, figures and verdicts.

Every condition of the experiment's `replication` section was trained, sampled and evaluated once
per seed (sfd.workflow.matrix.expand_replication). This writes
  * results/replication.csv: per condition, the seeds' toy-FID and class accuracy, their mean and
    the t-interval of the mean at `replication.confidence` (95 %);
  * one figure per claim: toy-FID and class accuracy against Δt, training steps or condition,
    mean and interval over seeds;
  * results/replication.md: per claim, what the paper reports, what we measured and a verdict.
The verdict rule: the paired per-seed difference d = toy-FID(than) - toy-FID(better) (positive when
the paper's ordering holds); its t-interval lies above 0: replicates; below 0: does not replicate
(the opposite holds); else inconclusive. Seeds pair up because conditions with the same seed share
nothing but the seed's sampling noise and data order: the pairing removes no real effect.
"""

import csv
import io
import logging
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from sfd.io import atomic_path, write_text  # noqa: E402
from sfd.workflow.matrix import Experiment, load  # noqa: E402
from sfd.workflow.table import read_metrics  # noqa: E402

log = logging.getLogger("sfd.replication")

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("name", "replication", "models", "sampling.seed")

METRICS = ("fid", "class_acc")
FIELDS = (
    "condition",
    "model",
    "model_type",
    "step",
    "delta_t",
    "guidance",
    "guidance_scale",
    "seeds",
    "n",
    *(f"{m}_{part}" for m in METRICS for part in ("mean", "ci_low", "ci_high", "values")),
)
VERDICTS = ("replicates", "does not replicate (the opposite holds)", "inconclusive")


def interval(values, confidence: float) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; NaN bounds for fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    t = stats.t.ppf((1 + confidence) / 2, len(values) - 1)
    half = float(t * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """The verdict on an interval of d = FID(than) - FID(better) (module docstring)."""
    if low > 0:
        return VERDICTS[0]
    if high < 0:
        return VERDICTS[1]
    return VERDICTS[2]


def seed_values(exp: Experiment, condition: str, metrics: dict, metric: str) -> list[float]:
    return [float(metrics[run][metric]) for run in exp.replicate_runs(condition)]


def condition_row(exp: Experiment, name: str, metrics: dict) -> dict:
    rep = exp.cfg["replication"]
    cond = rep["conditions"][name]
    model = exp.cfg["models"][cond["model"]]["model"]
    guidance = cond["guidance"]
    row = {
        "condition": name,
        "model": cond["model"],
        "model_type": model["model_type"],
        "step": cond["step"],
        "delta_t": model["semfirst_delta_t"],
        "guidance": guidance["kind"],
        "guidance_scale": guidance["scale"] if guidance["kind"] != "none" else "",
        "seeds": " ".join(map(str, rep["seeds"])),
        "n": len(rep["seeds"]),
    }
    for m in METRICS:
        values = seed_values(exp, name, metrics, m)
        mean, low, high = interval(values, rep["confidence"])
        row.update(
            {
                f"{m}_mean": mean,
                f"{m}_ci_low": low,
                f"{m}_ci_high": high,
                f"{m}_values": " ".join(repr(v) for v in values),
            }
        )
    return row


def x_value(row: dict, x: str, index: int) -> float:
    return {"delta_t": float(row["delta_t"]), "step": float(row["step"])}.get(x, float(index))


def speedup(claim: dict, rows: dict) -> str:
    """Steps the first curve needs to reach the second curve's final toy-FID, as a ratio."""
    labels = list(claim["curves"])
    if claim["x"] != "step" or len(labels) < 2:
        return ""
    fast = sorted((rows[c]["step"], rows[c]["fid_mean"]) for c in claim["curves"][labels[0]])
    slow = sorted((rows[c]["step"], rows[c]["fid_mean"]) for c in claim["curves"][labels[1]])
    final_step, final_fid = slow[-1]
    reached = [step for step, fid in fast if fid <= final_fid]
    if not reached:
        return (
            f"{labels[0]} does not reach {labels[1]}'s final toy-FID {final_fid:.1f} "
            f"within {fast[-1][0]} steps"
        )
    return (
        f"{labels[0]} reaches {labels[1]}'s final toy-FID {final_fid:.1f} (step {final_step}) at step "
        f"{reached[0]}: speed-up {final_step / reached[0]:.2f}x (first measured step, no interpolation)"
    )


def interior_optimum(claim: dict, rows: dict) -> str:
    """For a Δt sweep: where the mean toy-FID is lowest, and whether that lies inside the sweep."""
    if claim["x"] != "delta_t":
        return ""
    points = sorted((rows[c]["delta_t"], rows[c]["fid_mean"]) for c in next(iter(claim["curves"].values())))
    best = min(range(len(points)), key=lambda i: points[i][1])
    inside = 0 < best < len(points) - 1
    return (
        f"lowest mean toy-FID at Δt = {points[best][0]} ({points[best][1]:.1f}): "
        f"{'an interior optimum' if inside else 'at the end of the sweep, no interior optimum'}"
    )


def claim_result(exp: Experiment, name: str, metrics: dict, rows: dict) -> dict:
    rep = exp.cfg["replication"]
    claim = rep["claims"][name]
    result = {"name": name, **claim}
    for m, sign in (("fid", 1), ("class_acc", -1)):  # both oriented so that > 0 favours `better`
        diffs = sign * (
            np.array(seed_values(exp, claim["than"], metrics, m))
            - np.array(seed_values(exp, claim["better"], metrics, m))
        )
        result[m] = interval(diffs, rep["confidence"])
    result["verdict"] = verdict(*result["fid"][1:])
    result["speedup"] = speedup(claim, rows)
    result["optimum"] = interior_optimum(claim, rows)
    return result


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cell(mean: float, low: float, high: float, digits: int) -> str:
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _measured(row: dict, metric: str) -> str:
    """'mean [low, high]' of a condition's metric: 1 decimal for toy-FID, 3 for class accuracy."""
    digits = 1 if metric == "fid" else 3
    return _cell(row[f"{metric}_mean"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"], digits)


def report(exp: Experiment, rows: dict, claims: list[dict], figures: dict) -> str:
    """results/replication.md: one section per claim, the rule, the seeds and the table."""
    rep, pct = exp.cfg["replication"], f"{rep_pct(exp)} %"
    seeds = ", ".join(map(str, rep["seeds"]))
    lines = [
        f"# Miniature replication ({exp.name} experiment)",
        "",
        f"Seeds {seeds}: replicate s trains every DiT with train.seed_offset + s (its initialisation, data "
        f"order and training noise) and samples with sampling.seed ({exp.cfg['sampling']['seed']}) + s; "
        "tokenizers, semantic encoder, latents and the toy detector are shared. Numbers are toy-FID "
        "(lower is better) and class accuracy of the samples (toy detector vs conditioning label), "
        f"mean [{pct} t-interval] over seeds. Toy-FID is not FID-50K.",
        "",
        f"Verdict rule: d = toy-FID(than) - toy-FID(better), paired by seed; its {pct} interval above 0: "
        f"**{VERDICTS[0]}**; below 0: **{VERDICTS[1]}**; containing 0: **{VERDICTS[2]}**.",
        "",
    ]
    for c in claims:
        better, than = rows[c["better"]], rows[c["than"]]
        lines += [
            f"## {c['title']}",
            "",
            f"- Paper: {c['paper']}",
            f"- Measured: {c['better']} toy-FID {_measured(better, 'fid')}, class acc "
            f"{_measured(better, 'class_acc')}; {c['than']} toy-FID {_measured(than, 'fid')}, class acc "
            f"{_measured(than, 'class_acc')}",
            f"- Difference d (toy-FID, > 0 favours {c['better']}): {_cell(*c['fid'], 1)}; class accuracy "
            f"{c['better']} - {c['than']}: {_cell(*c['class_acc'], 3)}",
        ]
        lines += [f"- {extra}" for extra in (c["optimum"], c["speedup"]) if extra]
        lines += [f"- Verdict: **{c['verdict']}**", "", f"![{c['name']}]({figures[c['name']]})", ""]
    lines += [
        "## All conditions",
        "",
        "| condition | model | step | Δt | guidance | toy-FID | class acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        guidance = r["guidance"] + (f" {r['guidance_scale']}" if r["guidance_scale"] != "" else "")
        lines.append(
            f"| {r['condition']} | {r['model_type']} | {r['step']} | {r['delta_t']} | {guidance} | "
            f"{_measured(r, 'fid')} | {_measured(r, 'class_acc')} |"
        )
    return "\n".join(lines) + "\n"


def rep_pct(exp: Experiment) -> str:
    return f"{100 * exp.cfg['replication']['confidence']:g}"


def draw(exp: Experiment, claim: dict, rows: dict, out: Path) -> None:
    """Toy-FID and class accuracy of each curve's conditions, mean with the interval as error bar."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for label, conds in claim["curves"].items():
        points = sorted((x_value(rows[c], claim["x"], i), rows[c]) for i, c in enumerate(conds))
        xs = [p[0] for p in points]
        for ax, m in zip(axes, METRICS, strict=True):
            means = np.array([p[1][f"{m}_mean"] for p in points])
            low, high = (np.array([p[1][f"{m}_ci_{end}"] for p in points]) for end in ("low", "high"))
            ax.errorbar(xs, means, yerr=[means - low, high - means], fmt="o-", capsize=3, label=label)
    if claim["x"] == "condition":
        ticks = next(iter(claim["curves"].values()))
        for ax in axes:
            ax.set_xticks(range(len(ticks)), ticks, rotation=20, fontsize=7)
    for ax, label in zip(axes, ("toy-FID (lower is better)", "class accuracy of samples"), strict=True):
        ax.set_xlabel({"delta_t": "Δt (semantic lead)", "step": "training steps"}.get(claim["x"], ""))
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{claim['title']}: mean and {rep_pct(exp)} % interval over seeds", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (its `replication` section)")
    parser.add_argument("--csv", required=True, type=Path, help="per-condition CSV to write")
    parser.add_argument("--report", required=True, type=Path, help="Markdown report to write")
    parser.add_argument("--figures", required=True, type=Path, help="directory for replication_<claim>.png")
    parser.add_argument("metrics", nargs="+", help="metrics JSONs of every replicate run (<run>.json)")


def main(args) -> int:
    from sfd.config import ConfigError

    exp = load(args.config, __name__)
    rep = exp.cfg["replication"]
    if not rep["conditions"]:
        raise ConfigError(f"{args.config}: replication.conditions: empty, nothing to report")
    metrics = read_metrics(args.metrics)
    missing = [r for r in exp.replication_runs() if r not in metrics]
    if missing:
        raise ConfigError(f"{args.config}: replication: no metrics given for runs {missing}")
    lacking = [r for r in exp.replication_runs() if metrics[r].get("class_acc") is None]
    if lacking:
        raise ConfigError(f"replication: metrics of {lacking} lack class_acc (toy detector, `sfd evaluate`)")
    rows = {name: condition_row(exp, name, metrics) for name in rep["conditions"]}
    claims = [claim_result(exp, name, metrics, rows) for name in rep["claims"]]
    figures = {c["name"]: args.figures / f"replication_{c['name']}.png" for c in claims}
    for c in claims:
        draw(exp, c, rows, figures[c["name"]])
    write_text(to_csv(list(rows.values())), args.csv)
    relative = {k: os.path.relpath(p, args.report.parent) for k, p in figures.items()}
    write_text(report(exp, rows, claims, relative), args.report)
    log.info(
        "wrote %s, %s and %d figures: %s",
        args.csv,
        args.report,
        len(figures),
        ", ".join(f"{c['name']} {c['verdict']}" for c in claims),
    )
    return 0
