"""`sfd table` / `sfd plot` and the paper's numbers they carry."""

import copy
import csv
import json
import subprocess
import sys

import pytest
from workflow_helpers import MINI, write_config

from sfd.config import ConfigError
from sfd.workflow import matrix, plot, table


def write_metrics(tmp_path, runs, detector="toy", base=10.0):
    """Metrics JSONs as `sfd evaluate` writes them; values differ per run so rows can be told apart."""
    paths = []
    for i, run in enumerate(runs):
        metrics = {
            "fid": base + i,
            "sfid": 2 * base + i,
            "inception_score": 5.0 + i,
            "precision": 0.5,
            "recall": 0.25,
            "num_samples": 100,
            "detector_kind": detector,
            "class_acc": 0.5 + i / 10 if detector == "toy" else None,
            "metric_label": "toy-FID" if detector == "toy" else "FID-50K",
        }
        path = tmp_path / "metrics" / f"{run}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(metrics))
        paths.append(path)
    return paths


def test_paper_tables_are_complete_and_tagged():
    paper = matrix.paper_tables()
    assert set(paper) == {"table1", "table2", "readme", "fig_delta_t", "fig_convergence"}
    for name, entry in paper.items():
        assert entry["source"].startswith(("[P]", "[R]")), name
        for row_id, row in entry["rows"].items():
            assert row["kind"] in ("sfd", "quoted"), (name, row_id)
            if row["kind"] == "quoted":
                assert row["quoted_from"], (name, row_id)
    # spot checks against docs/method.md §6
    assert paper["table1"]["rows"]["sfd_xl_400k"]["fid"] == 3.53
    assert paper["table1"]["rows"]["sfd_xl_70k"]["fid"] == 8.79
    sfd_xxl = paper["table2"]["rows"]["sfd_xxl_800ep"]
    assert (
        sfd_xxl["fid"],
        sfd_xxl["sfid"],
        sfd_xxl["inception_score"],
        sfd_xxl["precision"],
        sfd_xxl["recall"],
    ) == (1.04, 3.75, 264.2, 0.78, 0.66)
    assert (
        paper["readme"]["rows"]["xl_80ep"]["fid"] == 3.43
        and paper["readme"]["rows"]["xl_80ep"]["fid_gpu"] == 3.50
    )
    assert [paper["fig_delta_t"]["rows"][f"dt_{d}"]["fid"] for d in ("0_0", "0_3", "1_0")] == [
        5.24,
        3.03,
        5.41,
    ]
    assert len(paper["table2"]["rows"]) == 21


def test_toy_table_labels_measured_columns_toy_and_mirrors_without_differences(tmp_path):
    exp = matrix.load(write_config(tmp_path, MINI))
    metrics = table.read_metrics(write_metrics(tmp_path, ["big_20", "big_40_ag"]))
    header, rows = table.build_table(exp, "table_fid", metrics)
    assert "toy_fid" in header and "ours_fid" not in header
    assert header[header.index("toy_fid") + 1] == "toy_class_acc" and "paper_class_acc" not in header
    assert not any(h.startswith("diff_") for h in header)
    assert [r["kind"] for r in rows] == ["measured", "measured"]  # no quoted literature in a toy table
    first = rows[0]
    assert first["run"] == "big_20" and first["toy_fid"] == 10.0 and first["step"] == 20
    assert (first["toy_class_acc"], rows[1]["toy_class_acc"]) == (0.5, 0.6)
    assert (
        first["paper_row"] == "readme.xl_80ep"
        and first["paper_fid"] == 3.43
        and first["paper_fid_gpu"] == 3.50
    )
    assert "not comparable" in first["provenance"]
    assert rows[1]["guidance"] == "autoguidance" and rows[1]["guidance_model"] == "small"
    assert rows[1]["guidance_step"] == 5 and rows[1]["guidance_scale"] == 1.5


def test_every_measured_row_states_its_seeds(tmp_path):
    data = copy.deepcopy(MINI)
    data["seed"] = 5
    data["sampling"]["seed"] = 3
    data["models"]["big"]["train"]["seed_offset"] = 10
    data["runs"]["big_40_ag"]["seed"] = 9
    exp = matrix.load(write_config(tmp_path, data))
    metrics = table.read_metrics(write_metrics(tmp_path, ["big_20", "big_40_ag"]))
    header, rows = table.build_table(exp, "table_fid", metrics)
    assert {"train_seed", "sample_seed"} <= set(header)
    assert [(r["train_seed"], r["sample_seed"]) for r in rows] == [(15, 3), (15, 9)]


def test_inception_table_has_differences_and_quoted_literature(tmp_path):
    data = copy.deepcopy(MINI)
    data["tables"]["t1"] = {
        "paper": "table1",
        "metrics": ["fid"],
        "rows": [{"run": "big_40", "paper_row": "table1.sfd_xl_4m"}],
    }
    exp = matrix.load(write_config(tmp_path, data))
    metrics = table.read_metrics(write_metrics(tmp_path, ["big_40"], detector="inception", base=3.0))
    header, rows = table.build_table(exp, "t1", metrics)
    assert "ours_fid" in header and "diff_fid" in header and "sfid" not in " ".join(header)
    assert "class_acc" not in " ".join(header)  # the Inception detector is not our classes' judge
    measured = rows[0]
    assert measured["diff_fid"] == pytest.approx(3.0 - 2.54)
    others = rows[1:]
    assert len(others) == len(matrix.paper_tables()["table1"]["rows"]) - 1
    quoted = [r for r in others if r["kind"] == "quoted"]
    assert {r["paper_method"] for r in quoted} >= {"DiT-B/2", "LightningDiT-XL/1 + REPA"}
    assert all(r["provenance"] and "quoted" not in r.get("ours_fid", "") for r in quoted)
    assert {r["paper_row"] for r in others if r["kind"] == "paper"} >= {
        "table1.sfd_xl_400k",
        "table1.sfd_b_400k",
    }
    assert all(r.get("ours_fid", "") == "" for r in others)


def test_missing_or_mixed_metrics_are_errors(tmp_path):
    exp = matrix.load(write_config(tmp_path, MINI))
    with pytest.raises(ConfigError, match=r"tables.table_fid: no metrics given for runs \['big_40_ag'\]"):
        table.build_table(exp, "table_fid", table.read_metrics(write_metrics(tmp_path, ["big_20"])))
    mixed = table.read_metrics(
        write_metrics(tmp_path, ["big_20"])
        + write_metrics(tmp_path / "metrics", ["big_40_ag"], detector="inception")
    )
    with pytest.raises(ConfigError, match="different detectors"):
        table.build_table(exp, "table_fid", mixed)
    old = table.read_metrics(write_metrics(tmp_path, ["big_20", "big_40_ag"]))
    del old["big_40_ag"]["class_acc"]  # evaluated before the class accuracy existed
    with pytest.raises(ConfigError, match=r"runs \['big_40_ag'\] lack one of \['fid', 'class_acc'"):
        table.build_table(exp, "table_fid", old)
    bad = tmp_path / "broken.json"
    bad.write_text('{"fid": 1')
    with pytest.raises(ConfigError, match="broken.json: not a readable metrics JSON"):
        table.read_metrics([bad])


def test_cli_writes_csv_and_plots_draw_both_figures(tmp_path):
    config = write_config(tmp_path, MINI)
    exp = matrix.load(config)
    for name in ("fig_fid_vs_delta_t", "fig_convergence"):
        paths = write_metrics(tmp_path, exp.table_runs(name))
        out_csv = tmp_path / f"{name}.csv"
        run = [
            sys.executable,
            "-m",
            "sfd",
            "table",
            "--config",
            str(config),
            "--table",
            name,
            "--out",
            str(out_csv),
            *map(str, paths),
        ]
        assert subprocess.run(run, capture_output=True, text=True).returncode == 0
        with open(out_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["run"] for r in rows] == exp.table_runs(name)
        png = tmp_path / f"{name}.png"
        draw = [
            sys.executable,
            "-m",
            "sfd",
            "plot",
            "--config",
            str(config),
            "--table",
            name,
            "--csv",
            str(out_csv),
            "--out",
            str(png),
        ]
        result = subprocess.run(draw, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    fail = subprocess.run(
        [
            sys.executable,
            "-m",
            "sfd",
            "plot",
            "--config",
            str(config),
            "--table",
            "table_fid",
            "--csv",
            str(out_csv),
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert fail.returncode == 2 and "tables.table_fid.plot is none" in fail.stderr


def test_iterations_parse_paper_notation():
    assert plot.iterations("400K") == 4e5 and plot.iterations("4M") == 4e6 and plot.iterations("120") == 120.0
