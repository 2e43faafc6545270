"""`sfd table`: one results CSV per paper table or figure, measured values beside the paper's.

A row is one of
  * `measured`: a run of this experiment (identity from the config, metrics from its JSON) with
    the paper row it reproduces (`paper_*` columns) and, when the metric is the paper's own
    (Inception detector), the difference measured minus paper (`diff_*`);
  * `paper`:    a row of the SFD paper's own method that no run of this experiment reproduces;
  * `quoted`:   another paper's method as the SFD paper quotes it; never reproduced here.
Measured columns are named after the detector: `ours_fid` (ADM Inception) or `toy_fid` (the toy
detector on 32x32 synthetic images). Toy numbers are not comparable to FID-50K, so a toy table has
no differences and carries only the paper rows its runs mirror. Every toy table also carries
`toy_class_acc` beside toy-FID: the fraction of samples the toy detector assigns to their
conditioning class (no paper counterpart), without which a low toy-FID could hide the wrong shapes.
"""

import csv
import io
import json
import logging
from pathlib import Path

from sfd.config import ConfigError
from sfd.io import write_text
from sfd.workflow.matrix import Experiment, load, paper_tables

log = logging.getLogger("sfd.tables")

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = (
    "name",
    "seed",
    "sampling.seed",
    "tables.{table}",
    "runs.{runs}",
    "models.{models}.model",
    "models.{models}.train.seed_offset",
)

IDENTITY = (
    "kind",
    "run",
    "model",
    "model_type",
    "source",
    "step",
    "delta_t",
    "guidance",
    "guidance_model",
    "guidance_step",
    "guidance_scale",
    "num_samples",
    "train_seed",
    "sample_seed",
    "metric_label",
)
TOY_ONLY = "class_acc"  # measured by the toy detector alone; next to fid in every toy table
PAPER_IDENTITY = (
    "paper_row",
    "paper_method",
    "paper_group",
    "paper_params",
    "paper_iter",
    "paper_epochs",
    "paper_delta_t",
    "paper_guidance",
)


def read_metrics(paths) -> dict[str, dict]:
    """Metrics JSONs by run name (the file stem, as the workflow writes them)."""
    out = {}
    for path in map(Path, paths):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a readable metrics JSON ({err})") from None
        missing = [k for k in ("fid", "detector_kind", "metric_label") if k not in metrics]
        if missing:
            raise ConfigError(f"{path}: metrics JSON lacks {', '.join(missing)}")
        out[path.stem] = metrics
    return out


def _paper_values(row: dict, table_id: str, metrics, extra) -> dict:
    values = {"paper_row": f"{table_id}.{row['id']}"}
    for key in PAPER_IDENTITY[1:]:
        values[key] = row.get(key.removeprefix("paper_"), "")
    for m in (*metrics, *extra):
        values[f"paper_{m}"] = row.get(m, "")
    return values


def _provenance(row: dict, source: str) -> str:
    parts = [row.get("provenance") or source, row.get("quoted_from"), row.get("note")]
    return "; ".join(p for p in parts if p)


def build_table(exp: Experiment, name: str, metrics_by_run: dict[str, dict]) -> tuple[list[str], list[dict]]:
    """Header and rows of results/<name>.csv."""
    table = exp.table(name)
    paper = paper_tables()
    wanted = table["metrics"]
    runs = exp.table_runs(name)
    missing = [r for r in runs if r not in metrics_by_run]
    if missing:
        raise ConfigError(f"tables.{name}: no metrics given for runs {missing}")
    kinds = {metrics_by_run[r]["detector_kind"] for r in runs}
    if len(kinds) != 1:
        raise ConfigError(f"tables.{name}: runs were evaluated with different detectors {sorted(kinds)}")
    toy = kinds == {"toy"}
    prefix = "toy" if toy else "ours"
    measured = _measured_metrics(wanted, toy)
    lacking = [r for r in runs if any(metrics_by_run[r].get(m) is None for m in measured)]
    if lacking:
        raise ConfigError(
            f"tables.{name}: metrics of runs {lacking} lack one of {measured} (re-run `sfd evaluate`)"
        )
    referenced = [row["paper_row"] for row in table["rows"] if row["paper_row"]]
    extra = (
        ["fid_gpu"]
        if "fid" in wanted
        and any("fid_gpu" in paper[r.split(".")[0]]["rows"][r.split(".")[1]] for r in referenced)
        else []
    )

    rows = []
    for entry in table["rows"]:
        spec, metrics = exp.run(entry["run"]), metrics_by_run[entry["run"]]
        model = exp.cfg["models"][spec["model"]]["model"]
        guidance = spec["guidance"]
        row = {
            "kind": "measured",
            "run": entry["run"],
            "model": spec["model"],
            "model_type": model["model_type"],
            "source": spec["source"],
            "step": spec["step"],
            "delta_t": model["semfirst_delta_t"],
            "guidance": guidance["kind"],
            "guidance_model": guidance["model"] or "",
            "guidance_step": guidance["step"] or "",
            "guidance_scale": guidance["scale"] if guidance["kind"] != "none" else "",
            "num_samples": metrics.get("num_samples", ""),
            **_seeds(exp, spec),
            "metric_label": metrics["metric_label"],
        }
        row.update({f"{prefix}_{m}": metrics[m] for m in measured})
        provenance = f"measured by this pipeline (experiment {exp.name}, {exp.path})"
        if entry["paper_row"]:
            table_id, _, row_id = entry["paper_row"].partition(".")
            prow = paper[table_id]["rows"][row_id]
            row.update(_paper_values(prow, table_id, wanted, extra))
            relation = "mirrors (toy metric, not comparable)" if toy else "reproduces"
            provenance += (
                f"; {relation} paper row {entry['paper_row']}: {_provenance(prow, paper[table_id]['source'])}"
            )
            if not toy:
                for m in wanted:
                    if prow.get(m) is not None:
                        row[f"diff_{m}"] = metrics[m] - prow[m]
        row["provenance"] = provenance
        rows.append(row)

    if table["paper"] and not toy:
        table_id = table["paper"]
        for row_id, prow in paper[table_id]["rows"].items():
            if f"{table_id}.{row_id}" in referenced:
                continue
            row = {"kind": "quoted" if prow["kind"] == "quoted" else "paper"}
            row.update(_paper_values(prow, table_id, wanted, extra))
            row["provenance"] = _provenance(prow, paper[table_id]["source"])
            rows.append(row)

    header = [
        *IDENTITY,
        *(f"{prefix}_{m}" for m in measured),
        *PAPER_IDENTITY,
        *(f"paper_{m}" for m in (*wanted, *extra)),
    ]
    if not toy:
        header += [f"diff_{m}" for m in wanted]
    header.append("provenance")
    return header, rows


def _seeds(exp: Experiment, spec: dict) -> dict:
    """The seeds behind a measured row: one seed per row is one draw, so a reader must see which
    (the training seed moves init and data order, the sample seed the noise; docs/decisions.md)."""
    trained = spec["source"] == "trained"
    return {
        "train_seed": exp.cfg["seed"] + exp.cfg["models"][spec["model"]]["train"]["seed_offset"]
        if trained
        else "",
        "sample_seed": spec.get("seed", exp.cfg["sampling"]["seed"]),
    }


def _measured_metrics(wanted: list[str], toy: bool) -> list[str]:
    """The table's metrics; a toy table adds the class accuracy right after fid (or first)."""
    if not toy:
        return list(wanted)
    at = wanted.index("fid") + 1 if "fid" in wanted else 0
    return [*wanted[:at], TOY_ONLY, *wanted[at:]]


def to_csv(header: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (its `tables` and `runs`)")
    parser.add_argument("--table", required=True, help="a key of `tables`")
    parser.add_argument("--out", required=True, type=Path, help="CSV to write (results/<table>.csv)")
    parser.add_argument("metrics", nargs="+", help="metrics JSONs of the table's runs (<run>.json)")


def main(args) -> int:
    exp = load(args.config, __name__, table=args.table)
    header, rows = build_table(exp, args.table, read_metrics(args.metrics))
    write_text(to_csv(header, rows), args.out)
    log.info(
        "wrote %s: %d rows (%d measured)", args.out, len(rows), sum(r["kind"] == "measured" for r in rows)
    )
    return 0
