"""The experiment's job matrix: which models train to which budgets, which runs sample and
evaluate, which tables they fill, and where every artifact lives.

The Snakefile builds its DAG from these functions, `sfd table` reads the same run identities,
and `sfd dvc-yaml` converts the resulting DAG, so the matrix is defined once. Everything here is
plain data derived from the validated experiment file; nothing touches the disk except `load`.
"""

import copy
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from sfd import reads
from sfd.config import ConfigError, load_experiment
from sfd.models.sizes import step_cost

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


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

    def params(self, *keys: str) -> dict:
        """{dotted key: resolved value} for the config a job reads.

        Snakemake stores it as the job's `params` (its rerun trigger sees exactly these values
        change) and `sfd dvc-yaml` turns the keys into the stage's DVC `params:` list.
        """
        return {key: _canonical(reads.get(self.cfg, key, self.path)) for key in keys}

    def reads(self, command: str, **names) -> list[str]:
        """The keys a job of `sfd <command>` depends on: its declared READS (sfd/reads.py), with
        placeholders filled from the job's wildcards `names`."""
        return reads.keys_of(command, self.cfg, names)

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

    # -- runs and tables -----------------------------------------------------------------

    def run(self, name: str) -> dict:
        if name not in self.cfg["runs"]:
            raise ConfigError(f"{self.path}: runs.{name}: no such run (known: {_known(self.cfg['runs'])})")
        return self.cfg["runs"][name]

    def table(self, name: str) -> dict:
        if name not in self.cfg["tables"]:
            raise ConfigError(
                f"{self.path}: tables.{name}: no such table (known: {_known(self.cfg['tables'])})"
            )
        return self.cfg["tables"][name]

    def table_runs(self, name: str) -> list[str]:
        return list(dict.fromkeys(row["run"] for row in self.table(name)["rows"]))

    def num_samples(self, run: str) -> int:
        return self.run(run)["num_samples"] or self.cfg["sampling"]["num_samples"]

    # -- replication ---------------------------------------------------------------------

    def replicate_runs(self, condition: str) -> list[str]:
        """The runs of one replication condition, in seed order."""
        return [replicate(condition, seed) for seed in self.cfg["replication"]["seeds"]]

    def replication_runs(self) -> list[str]:
        return [run for c in self.cfg["replication"]["conditions"] for run in self.replicate_runs(c)]

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


def replicate(name: str, seed: int) -> str:
    """The name of a replicated model or condition for one replication seed."""
    return f"{name}_s{seed}"


def expand_replication(cfg: dict, source: str) -> dict:
    """`cfg` with the replication spelled out: for each seed, a copy `<model>_s<seed>` of every
    model a condition uses (its AutoGuidance model too) training with seed_offset + seed, and a run
    `<condition>_s<seed>` sampling it with sampling.seed + seed. The seed thus moves the DiT's
    initialisation, its data order and training noise, and the sampling noise; tokenizers, encoder
    and latents are shared. A name the file already uses is an error, never overwritten."""
    rep = cfg["replication"]
    if not rep["conditions"]:
        return cfg
    models, runs = dict(cfg.get("models", {})), dict(cfg["runs"])
    for name, cond in rep["conditions"].items():
        bases = _condition_models(cfg, name, source)
        for seed in rep["seeds"]:
            for base in bases.values():
                template = cfg["models"][base]
                train = {**template["train"], "seed_offset": template["train"]["seed_offset"] + seed}
                replica = {**copy.deepcopy(template), "train": train}
                models[_unused(cfg, "models", replicate(base, seed), source)] = replica
            guide = bases.get("guidance.model")
            runs[_unused(cfg, "runs", replicate(name, seed), source)] = {
                "model": replicate(cond["model"], seed),
                "step": cond["step"],
                "source": "trained",
                "guidance": {**cond["guidance"], "model": guide and replicate(guide, seed)},
                "num_samples": cond["num_samples"],
                "seed": cfg["sampling"]["seed"] + seed,
            }
    return {**cfg, "models": models, "runs": runs}


def _condition_models(cfg: dict, name: str, source: str) -> dict[str, str]:
    """{key: model} of the models condition `name` samples with (`model`, `guidance.model`)."""
    cond = cfg["replication"]["conditions"][name]
    found = {"model": cond["model"]}
    if cond["guidance"]["kind"] == "autoguidance" and cond["guidance"]["model"] is not None:
        found["guidance.model"] = cond["guidance"]["model"]
    for key, model in found.items():
        if model not in cfg.get("models", {}):
            raise ConfigError(
                f"{source}: replication.conditions.{name}.{key}: {model!r} is not a key of models "
                f"(known: {_known(cfg.get('models', {}))})"
            )
    return found


def _unused(cfg: dict, section: str, name: str, source: str) -> str:
    if name in cfg[section]:
        raise ConfigError(
            f"{source}: {section}.{name}: the replication section names a replicate so; rename it"
        )
    return name


def origin_keys(cfg: dict, key: str) -> list[str]:
    """The keys of the experiment file that a key of the expanded experiment comes from: itself, or
    for a replicate the condition or model it copies plus the seeds (DVC tracks these)."""
    rep, origins = cfg["replication"], {}
    for seed in rep["seeds"]:
        for name in rep["conditions"]:
            origins[f"runs.{replicate(name, seed)}"] = (f"replication.conditions.{name}", "sampling.seed")
            for base in _condition_models(cfg, name, "<config>").values():
                origins[f"models.{replicate(base, seed)}"] = (f"models.{base}",)
    for prefix, (origin, *extra) in origins.items():
        if key == prefix or key.startswith(prefix + "."):
            return [origin + key[len(prefix) :], "replication.seeds", *extra]
    return [key]


def _canonical(value):
    """`value` with mapping keys sorted: Snakemake compares params by their text, and reordering
    keys in the YAML file must not rerun anything."""
    return json.loads(json.dumps(value, sort_keys=True))


def _known(mapping) -> str:
    return ", ".join(mapping) or "none"


def load(path, module: str | None = None, **names) -> Experiment:
    """Load, schema-validate and cross-check an experiment file; with `module`, the experiment as
    that command may read it (sfd.reads.restrict)."""
    cfg = load_experiment(path)
    exp = Experiment(str(path), cfg)
    check(exp)
    if module is None:
        return exp
    return Experiment(exp.path, reads.restrict(cfg, module, exp.path, **names))


def check(exp: Experiment) -> None:
    """Relations between sections that a JSON schema cannot state; errors name the key."""
    _check_models(exp)
    _check_replication(exp)
    _check_runs(exp)
    _check_tables(exp)


def _check_models(exp: Experiment) -> None:
    for name, model in exp.cfg["models"].items():
        if not _NAME.match(name):
            raise ConfigError(f"{exp.path}: models.{name}: model names may hold only letters, digits, _")
        train = model["train"]
        last = max(train["budgets"])
        late = [s for s in train["keep_steps"] if s > last]
        if late:
            raise ConfigError(
                f"{exp.path}: models.{name}.train.keep_steps: {late} lie beyond the last budget {last}"
            )


def _check_weights(exp: Experiment, key: str, model, step, source: str) -> None:
    """`model` at `step` exists: a released checkpoint listed in `released`, or an export step."""
    models = exp.cfg["models"]
    if model not in models:
        raise ConfigError(f"{exp.path}: {key}: {model!r} is not a key of models (known: {_known(models)})")
    if source == "released":
        if model not in exp.cfg["released"]["checkpoints"]:
            raise ConfigError(
                f"{exp.path}: {key}: released weights of {model!r} are not listed in released.checkpoints"
            )
        return
    available = exp.export_steps(model)
    if step not in available:
        raise ConfigError(
            f"{exp.path}: {key}: step {step} of {model!r} is neither a budget nor a keep_step "
            f"(available: {available})"
        )


def _check_runs(exp: Experiment) -> None:
    cfg, src = exp.cfg, exp.path
    if (
        any(run["source"] == "released" for run in cfg["runs"].values())
        and cfg["latents"]["released_stats"] is None
    ):
        raise ConfigError(
            f"{src}: latents.released_stats: runs with source released need the released statistics"
        )
    for name, run in cfg["runs"].items():
        _check_weights(exp, f"runs.{name}.model", run["model"], run["step"], run["source"])
        guidance = run["guidance"]
        if guidance["kind"] == "autoguidance":
            if guidance["model"] is None or guidance["step"] is None:
                raise ConfigError(f"{src}: runs.{name}.guidance: autoguidance needs model and step")
            _check_weights(
                exp, f"runs.{name}.guidance.model", guidance["model"], guidance["step"], run["source"]
            )
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
            raise ConfigError(
                f"{src}: runs.{name}.guidance.scale: {guidance['kind']} acts only when scale > 1"
            )


def _check_replication(exp: Experiment) -> None:
    """Conditions sample existing export steps; claims compare and plot existing conditions."""
    rep, src = exp.cfg["replication"], exp.path
    if not rep["conditions"]:
        return
    if len(rep["seeds"]) < 2:
        raise ConfigError(f"{src}: replication.seeds: an interval over seeds needs at least 2 seeds")
    for name, cond in rep["conditions"].items():
        key = f"replication.conditions.{name}"
        _check_weights(exp, f"{key}.model", cond["model"], cond["step"], "trained")
        guidance = cond["guidance"]
        if guidance["kind"] == "autoguidance" and guidance["step"] is not None:
            _check_weights(exp, f"{key}.guidance.model", guidance["model"], guidance["step"], "trained")
    for name, claim in rep["claims"].items():
        named = [("better", claim["better"]), ("than", claim["than"])]
        named += [(f"curves.{label}", c) for label, conds in claim["curves"].items() for c in conds]
        for key, cond in named:
            if cond not in rep["conditions"]:
                raise ConfigError(
                    f"{src}: replication.claims.{name}.{key}: {cond!r} is not a key of "
                    "replication.conditions "
                    f"(known: {_known(rep['conditions'])})"
                )


def _check_tables(exp: Experiment) -> None:
    cfg, src = exp.cfg, exp.path
    paper = paper_tables()
    for name, table in cfg["tables"].items():
        if table["paper"] is not None and table["paper"] not in paper:
            raise ConfigError(
                f"{src}: tables.{name}.paper: {table['paper']!r} is not a paper table "
                f"(known: {_known(paper)})"
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
