"""The experiment's job matrix: which models train to which budgets, which runs sample and
evaluate, which tables they fill, and where every artifact lives.

The Snakefile builds its DAG from these functions, `sfd tables` reads the same run identities,
and `sfd dvc-yaml` converts the resulting DAG, so the matrix is defined once. Everything here is
plain data derived from the validated experiment file; nothing touches the disk except `load`.
"""

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from sfd.config import ConfigError, load_experiment
from sfd.models.sizes import step_cost

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
# models.<m>.train keys that do not change the training trajectory (as sfd.train._SCHEDULE_KEYS;
# tests/test_workflow.py keeps the two equal).
SCHEDULE_KEYS = frozenset({"budgets", "ckpt_every", "keep_steps", "log_every", "num_workers", "compile"})
# sampling.* keys that change the samples; pack_seed and the grid shape only reorder/show them, and
# the guidance defaults are overridden per run (runs.<r>.guidance).
SAMPLE_KEYS = ("method", "num_steps", "atol", "rtol", "timestep_shift", "batch_size", "shard_size", "seed",
               "cfg_interval_start", "tf32")


def paper_tables() -> dict:
    """The paper's numbers (sfd/data/paper_tables.yaml), keyed by table then row id."""
    text = (Path(__file__).parent.parent / "data" / "paper_tables.yaml").read_text()
    tables = yaml.safe_load(text)
    for table in tables.values():
        table["rows"] = {row["id"]: row for row in table["rows"]}
    return tables


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file plus the derived job matrix."""

    path: str
    cfg: dict

    @property
    def name(self) -> str:
        return self.cfg["name"]

    @property
    def root(self) -> str:
        return f"outputs/{self.name}"

    def section(self, dotted: str):
        """The resolved value at a dotted key path, e.g. `models.sfd_b.train`."""
        value = self.cfg
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ConfigError(f"{self.path}: {dotted}: no such key")
            value = value[part]
        return value

    def params(self, *keys: str) -> dict:
        """{dotted key: resolved value} for the config a job reads.

        Snakemake stores it as the job's `params` (its rerun trigger sees exactly these values
        change) and `sfd dvc-yaml` turns the keys into the stage's DVC `params:` list.
        """
        return {key: self.section(key) for key in keys}

    # -- training ------------------------------------------------------------------------

    def export_steps(self, model: str) -> list[int]:
        """Steps at which `model` is checkpointed and its EMA exported: budgets and keep_steps."""
        train = self.cfg["models"][model]["train"]
        return sorted(set(train["budgets"]) | set(train["keep_steps"]))

    def previous_step(self, model: str, step: int) -> int | None:
        """The export step a training job for `step` continues from (None: from scratch).

        Training is chained through every export step: the job for the 800-epoch budget starts
        from the 80-epoch checkpoint, and a keep_step (AutoGuidance's 60K/70K/120K) ends a job of
        its own. A continued run equals one uninterrupted run (sfd train's resume contract)."""
        steps = self.export_steps(model)
        if step not in steps:
            raise ConfigError(
                f"{self.path}: models.{model}.train: step {step} is neither a budget nor a keep_step "
                f"(have {steps})"
            )
        i = steps.index(step)
        return steps[i - 1] if i else None

    def run_dir(self, model: str, step: int) -> str:
        return f"{self.root}/train/{model}/{step:07d}"

    def checkpoint(self, model: str, step: int) -> str:
        return f"{self.run_dir(model, step)}/checkpoints/{step:07d}.pt"

    def ema(self, model: str, step: int, source: str = "trained") -> str:
        if source == "released":
            return f"{self.root}/released/{model}/{step:07d}.pt"
        return f"{self.run_dir(model, step)}/ema/{step:07d}.pt"

    def priority(self, model: str) -> int:
        """Scheduler rank of `model`'s training and sampling jobs: 0 for the cheapest step cost.

        Where cores are short, Snakemake starts higher priorities first; starting the costliest
        model first keeps its training chain, the DAG's critical path, from waiting."""
        models = self.cfg["models"]
        by_cost = sorted(models, key=lambda m: (step_cost(models[m]["model"]["model_type"]), m))
        return by_cost.index(model)

    def train_keys(self, model: str) -> list[str]:
        """Config keys that fix the training trajectory of `model`; the schedule keys (budgets,
        cadences, loader processes) do not, so extending a budget reruns nothing already done."""
        train = self.cfg["models"][model]["train"]
        return ["seed", "data.num_classes", "latents.multiplier", f"models.{model}.model"] + [
            f"models.{model}.train.{k}" for k in train if k not in SCHEDULE_KEYS
        ]

    # -- runs and tables -----------------------------------------------------------------

    def run(self, name: str) -> dict:
        if name not in self.cfg["runs"]:
            raise ConfigError(
                f"{self.path}: runs.{name}: no such run (known: {_known(self.cfg['runs'])})"
            )
        return self.cfg["runs"][name]

    def table(self, name: str) -> dict:
        if name not in self.cfg["tables"]:
            raise ConfigError(
                f"{self.path}: tables.{name}: no such table (known: {_known(self.cfg['tables'])})"
            )
        return self.cfg["tables"][name]

    def table_runs(self, name: str) -> list[str]:
        return list(dict.fromkeys(row["run"] for row in self.table(name)["rows"]))

    def table_keys(self, name: str) -> list[str]:
        """Config keys a table reads: its own entry and the identity of its runs' models."""
        keys = [f"tables.{name}"]
        for run in self.table_runs(name):
            keys += [f"runs.{run}", f"models.{self.run(run)['model']}.model"]
        return list(dict.fromkeys(keys))

    def num_samples(self, run: str) -> int:
        return self.run(run)["num_samples"] or self.cfg["sampling"]["num_samples"]

    def sample_keys(self, run: str) -> list[str]:
        """Config keys that fix the samples of `run` (not the pack order or the grid)."""
        spec = self.run(run)
        keys = ["data.num_classes", "latents.multiplier", f"runs.{run}", f"models.{spec['model']}.model"]
        if spec["guidance"]["kind"] == "autoguidance":
            keys.append(f"models.{spec['guidance']['model']}.model")
        keys += [f"sampling.{k}" for k in SAMPLE_KEYS]
        if spec["num_samples"] is None:
            keys.append("sampling.num_samples")
        return keys

    @cached_property
    def released_weights(self) -> list[tuple[str, int]]:
        """(model, step) pairs that runs with `source: released` sample or guide with."""
        pairs = []
        for run in self.cfg["runs"].values():
            if run["source"] != "released":
                continue
            pairs.append((run["model"], run["step"]))
            if run["guidance"]["kind"] == "autoguidance":
                pairs.append((run["guidance"]["model"], run["guidance"]["step"]))
        return list(dict.fromkeys(pairs))


def _known(mapping) -> str:
    return ", ".join(mapping) or "none"


def load(path) -> Experiment:
    """Load, schema-validate and cross-check an experiment file."""
    cfg = load_experiment(path)
    exp = Experiment(str(path), cfg)
    check(exp)
    return exp


def check(exp: Experiment) -> None:
    """Relations between sections that a JSON schema cannot state; errors name the key."""
    cfg, src = exp.cfg, exp.path
    models = cfg["models"]
    for name in models:
        if not _NAME.match(name):
            raise ConfigError(f"{src}: models.{name}: model names may hold only letters, digits, _")
    for name, model in models.items():
        train = model["train"]
        last = max(train["budgets"])
        late = [s for s in train["keep_steps"] if s > last]
        if late:
            raise ConfigError(
                f"{src}: models.{name}.train.keep_steps: {late} lie beyond the last budget {last}"
            )
    released = cfg["released"]["checkpoints"]
    if any(run["source"] == "released" for run in cfg["runs"].values()) and cfg["latents"]["released_stats"] is None:
        raise ConfigError(f"{src}: latents.released_stats: runs with source released need the released statistics")

    def check_weights(key: str, model, step, source: str) -> None:
        if model not in models:
            raise ConfigError(f"{src}: {key}: {model!r} is not a key of models (known: {_known(models)})")
        if source == "released":
            if model not in released:
                raise ConfigError(
                    f"{src}: {key}: released weights of {model!r} are not listed in released.checkpoints"
                )
            return
        available = exp.export_steps(model)
        if step not in available:
            raise ConfigError(
                f"{src}: {key}: step {step} of {model!r} is neither a budget nor a keep_step "
                f"(available: {available})"
            )

    for name, run in cfg["runs"].items():
        check_weights(f"runs.{name}.model", run["model"], run["step"], run["source"])
        guidance = run["guidance"]
        if guidance["kind"] == "autoguidance":
            if guidance["model"] is None or guidance["step"] is None:
                raise ConfigError(f"{src}: runs.{name}.guidance: autoguidance needs model and step")
            check_weights(f"runs.{name}.guidance.model", guidance["model"], guidance["step"], run["source"])
        elif guidance["model"] is not None or guidance["step"] is not None:
            raise ConfigError(
                f"{src}: runs.{name}.guidance: model/step are for autoguidance, kind is {guidance['kind']!r}"
            )
        wanted, have = cfg["evaluation"]["num_samples"], exp.num_samples(name)
        if have < wanted:
            raise ConfigError(
                f"{src}: runs.{name}.num_samples: {have} samples, fewer than evaluation.num_samples {wanted}"
            )
        if guidance["kind"] != "none" and guidance["scale"] <= 1:
            raise ConfigError(f"{src}: runs.{name}.guidance.scale: {guidance['kind']} acts only when scale > 1")

    paper = paper_tables()
    for name, table in cfg["tables"].items():
        if table["paper"] is not None and table["paper"] not in paper:
            raise ConfigError(
                f"{src}: tables.{name}.paper: {table['paper']!r} is not a paper table (known: {_known(paper)})"
            )
        for i, row in enumerate(table["rows"]):
            if row["run"] not in cfg["runs"]:
                raise ConfigError(
                    f"{src}: tables.{name}.rows.{i}.run: {row['run']!r} is not a key of runs "
                    f"(known: {_known(cfg['runs'])})"
                )
            ref = row["paper_row"]
            if ref is not None:
                table_id, _, row_id = ref.partition(".")
                if table_id not in paper or row_id not in paper[table_id]["rows"]:
                    raise ConfigError(
                        f"{src}: tables.{name}.rows.{i}.paper_row: {ref!r} is not a row of "
                        "sfd/data/paper_tables.yaml (write <table>.<row id>)"
                    )
