"""What each command reads from the experiment file, declared once beside its code.

Every command module that takes `--config` declares, as module-level tuples of dotted keys,
  READS       the keys whose values shape its output: Snakemake's params, the DVC stages'
              `params:` and `sfd launch`'s state fingerprint are exactly these, so changing one
              reruns the job and its descendants, and changing any other key reruns nothing;
  ALSO_READS  keys it reads that never change its output (log and checkpoint cadences, loader
              processes, budgets that only say where a chained job stops).
A key may hold placeholders filled from the job: `{model}`, `{run}`, `{table}`, `{split}`, `{key}`
(command-line values or Snakemake wildcards), and `{guide}`, `{runs}`, `{models}` derived from
them (a run's model and AutoGuidance model; a table's runs and their models). A key whose
placeholder has no value (no guide model) is dropped; a list value expands it once per item.

The command reads its experiment through `view`, which raises on any key it did not declare, so a
read that drifts from the declaration fails the first test that runs the command. The
declarations are parsed from the module source with `ast`, never imported: the Snakefile reads
them without loading torch or TensorFlow.
"""

import ast
import copy
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from sfd.config import ConfigError, load_experiment

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PACKAGE = Path(__file__).parent


@cache
def declared(module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(READS, ALSO_READS) of a command module such as `sfd.latents.extract`, parsed from its source."""
    path = _PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    found = {"READS": (), "ALSO_READS": ()}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in found:
                found[name] = tuple(ast.literal_eval(node.value))
    return found["READS"], found["ALSO_READS"]


def derived_names(cfg: dict, names: dict) -> dict:
    """The job's names plus those that follow from them: a run's models, a table's runs."""
    names = {k: v for k, v in names.items() if v is not None}
    run = names.get("run")
    if run is not None and run in cfg["runs"]:
        spec = cfg["runs"][run]
        names.setdefault("model", spec["model"])
        if spec["guidance"]["kind"] == "autoguidance":
            names.setdefault("guide", spec["guidance"]["model"])
    table = names.get("table")
    if table is not None and table in cfg["tables"]:
        runs = list(dict.fromkeys(row["run"] for row in cfg["tables"][table]["rows"]))
        names["runs"] = runs
        names["models"] = list(dict.fromkeys(cfg["runs"][r]["model"] for r in runs if r in cfg["runs"]))
    return names


def resolve(templates, cfg: dict, names: dict) -> list[str]:
    """Dotted keys of `templates` with placeholders filled from `names` (see module docstring)."""
    names = derived_names(cfg, names)
    out = []
    for template in templates:
        keys = [template]
        for placeholder in _PLACEHOLDER.findall(template):
            value = names.get(placeholder)
            values = value if isinstance(value, list) else [] if value is None else [value]
            keys = [k.replace(f"{{{placeholder}}}", str(v)) for k in keys for v in values]
        out += keys
    return list(dict.fromkeys(out))


def module_of(command: str) -> str:
    """The module of an `sfd` subcommand (sfd.cli.COMMANDS), e.g. `extract-latents` -> sfd.latents.extract."""
    from sfd.cli import COMMANDS

    if command not in COMMANDS:
        raise ConfigError(f"sfd {command}: no such command (known: {', '.join(COMMANDS)})")
    return COMMANDS[command][0]


def command_name(module: str) -> str:
    from sfd.cli import COMMANDS

    return next((name for name, (mod, _) in COMMANDS.items() if mod == module), module)


def keys_of(command: str, cfg: dict, names: dict) -> list[str]:
    """The resolved READS of `sfd <command>`: the keys a job of it depends on."""
    return resolve(declared(module_of(command))[0], cfg, names)


def get(cfg: dict, dotted: str, source: str = "<config>"):
    """The value at a dotted key path, e.g. `models.sfd_b.train.lr`; ConfigError naming it if absent."""
    value = cfg
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ConfigError(f"{source}: {dotted}: no such key")
        value = value[part]
    return value


class ConfigView(Mapping):
    """A read-only view of the experiment that lets a command read only what it declared.

    Reading a declared key (or anything under it) returns a private copy of the value; reading an
    ancestor of declared keys returns a narrower view; anything else raises ConfigError, naming
    the command, the key and where to declare it."""

    def __init__(self, cfg: dict, keys, command: str, source: str, prefix: str = ""):
        self._cfg, self._keys, self._command, self._source, self._prefix = (
            cfg,
            tuple(keys),
            command,
            source,
            prefix,
        )

    def _path(self, key) -> str:
        return f"{self._prefix}.{key}" if self._prefix else str(key)

    def _covered(self, path: str) -> bool:
        return any(path == k or path.startswith(k + ".") for k in self._keys)

    def _ancestor(self, path: str) -> bool:
        return any(k.startswith(path + ".") for k in self._keys)

    def __getitem__(self, key):
        path = self._path(key)
        if key not in self._cfg:
            raise KeyError(key)
        if self._covered(path):
            return copy.deepcopy(self._cfg[key])
        if self._ancestor(path) and isinstance(self._cfg[key], dict):
            return ConfigView(self._cfg[key], self._keys, self._command, self._source, path)
        raise ConfigError(
            f"{self._source}: {path}: `sfd {self._command}` reads this key without declaring it "
            "(add it to READS or ALSO_READS of its module; see sfd/reads.py)"
        )

    def __iter__(self):
        return (k for k in self._cfg if self._covered(self._path(k)) or self._ancestor(self._path(k)))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key) -> bool:
        return key in self._cfg and (self._covered(self._path(key)) or self._ancestor(self._path(key)))

    def replace(self, key: str, value) -> "ConfigView":
        """This view with top-level `key` set to `value` (a command-line override such as --device)."""
        return ConfigView({**self._cfg, key: value}, self._keys, self._command, self._source, self._prefix)

    def resolved(self) -> dict:
        """The declared part of the experiment as plain nested dicts (to store beside results)."""
        return {k: v.resolved() if isinstance(v, ConfigView) else v for k, v in self.items()}


def plain(cfg: Mapping) -> dict:
    """A view's declared part, or a dict as it is: what a command stores beside its results."""
    return cfg.resolved() if isinstance(cfg, ConfigView) else cfg


def restrict(cfg: dict, module: str, source: str, **names) -> ConfigView:
    """The validated experiment `cfg` as the command in `module` may read it: its READS and
    ALSO_READS, placeholders filled from `names`."""
    for name, section in (("model", "models"), ("guide", "models"), ("run", "runs"), ("table", "tables")):
        value = names.get(name)
        if value is not None and value not in cfg.get(section, {}):
            known = ", ".join(cfg.get(section, {})) or "none"
            raise ConfigError(f"{source}: {section}.{value}: no such {section[:-1]} (have: {known})")
    reads, also = declared(module)
    return ConfigView(cfg, resolve(reads + also, cfg, names), command_name(module), source)


def markdown_table() -> str:
    """Every command's declaration as a Markdown table (the generated section of docs/workflow.md)."""
    from sfd.cli import COMMANDS

    def cell(keys) -> str:
        return ", ".join(f"`{k}`" for k in keys) or "-"

    rows = ["| command | READS (rerun its jobs) | ALSO_READS (never rerun) |", "|---|---|---|"]
    for name, (module, _) in COMMANDS.items():
        keys, also = declared(module)
        if keys or also:
            rows.append(f"| `sfd {name}` | {cell(keys)} | {cell(also)} |")
    return "\n".join(rows) + "\n"


def view(path, module: str, **names) -> ConfigView:
    """The experiment file at `path`, schema-validated, restricted to what `module` declares."""
    return restrict(load_experiment(path), module, str(path), **names)


if __name__ == "__main__":
    print(markdown_table(), end="")
