"""A small experiment for workflow tests: two chained models, an AutoGuidance model, a Δt
variant and three tables, so every rule of the DAG appears without any heavy job."""

from pathlib import Path

import yaml

MINI = {
    "name": "mini",
    "device": "auto",
    "evaluation": {"detector": "toy", "num_samples": 100, "reference_size": 100},
    "sampling": {"num_samples": 100, "batch_size": 50, "shard_size": 100, "method": "euler", "num_steps": 10},
    "models": {
        "big": {
            "model": {"model_type": "LightningDiT-T/1", "in_chans": 8, "semantic_chans": 4, "semfirst_delta_t": 0.3},
            "train": {"budgets": [20, 40], "keep_steps": [10], "global_batch_size": 16},
        },
        "small": {
            "model": {"model_type": "LightningDiT-P/1", "in_chans": 8, "semantic_chans": 4, "semfirst_delta_t": 0.3},
            "train": {"budgets": [10], "keep_steps": [5], "global_batch_size": 16},
        },
        "big_dt0": {
            "model": {"model_type": "LightningDiT-T/1", "in_chans": 8, "semantic_chans": 4},
            "train": {"budgets": [20], "global_batch_size": 16},
        },
    },
    "runs": {
        "big_20": {"model": "big", "step": 20},
        "big_40": {"model": "big", "step": 40},
        "big_10": {"model": "big", "step": 10},
        "big_dt0_20": {"model": "big_dt0", "step": 20},
        "big_40_ag": {"model": "big", "step": 40,
                      "guidance": {"kind": "autoguidance", "model": "small", "step": 5, "scale": 1.5}},
    },
    "tables": {
        "table_fid": {"paper": "readme", "rows": [
            {"run": "big_20", "paper_row": "readme.xl_80ep"}, {"run": "big_40_ag", "paper_row": "readme.xl_800ep_ag"}]},
        "fig_convergence": {"paper": "fig_convergence", "metrics": ["fid"], "plot": "step",
                            "rows": [{"run": "big_10"}, {"run": "big_20"}, {"run": "big_40"}]},
        "fig_fid_vs_delta_t": {"paper": "fig_delta_t", "metrics": ["fid"], "plot": "delta_t", "rows": [
            {"run": "big_dt0_20", "paper_row": "fig_delta_t.dt_0_0"}, {"run": "big_20", "paper_row": "fig_delta_t.dt_0_3"}]},
    },
}


def write_config(tmp_path, data, name="exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
