"""Experiment configuration: YAML files validated against JSON schemas before anything runs.

Schemas live in `sfd/schemas/*.schema.yaml`, one file per section, composed by `$ref` from
`experiment.schema.yaml`. Validation fills schema defaults, so code downstream reads plain dicts
with every key present. Errors name the file and the dotted key path, e.g.
`config/toy.yaml: models.sfd_b.model.semfirst_delta_t: 1.5 is greater than the maximum of 1`.
"""

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from sfd.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file (or section) that does not satisfy its schema."""


def _with_defaults(validator_class):
    """Extend a validator so that `properties` also inserts schema defaults into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(Draft202012Validator)


@cache
def _registry() -> Registry:
    registry = Registry()
    for item in resources.files("sfd").joinpath("schemas").iterdir():
        if item.name.endswith(".schema.yaml"):
            contents = yaml.safe_load(item.read_text())
            # Stored without `$schema`: jsonschema evolves into the stock validator of a $ref
            # target that names its meta-schema, and the stock one fills no defaults.
            contents.pop("$schema", None)
            registry = registry.with_resource(item.name, DRAFT202012.create_resource(contents))
    return registry


def schema(name: str) -> dict:
    """The schema stored as `sfd/schemas/{name}.schema.yaml`."""
    return _registry()[f"{name}.schema.yaml"].contents


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(data, name: str, *, source: str = "<config>") -> dict:
    """Validate `data` against schema `name`; return a copy with defaults filled in.

    Raises ConfigError listing every violation as `source: key.path: message`.
    """
    data = copy.deepcopy(data) if data is not None else {}
    validator = _Validator(schema(name), registry=_registry())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(f"{source}: {_key_path(e)}: {e.message}" for e in errors))
    for check in _CROSS_CHECKS.get(name, ()):
        check(data, source)
    return data


def check_model_section(model: dict, where: str) -> None:
    """Relations between keys of an official `model:` section that a schema cannot express."""
    if model["semantic_chans"] > model["in_chans"]:
        raise ConfigError(
            f"{where}.semantic_chans: {model['semantic_chans']} exceeds in_chans {model['in_chans']}"
        )
    if model["semfirst_delta_t"] > 0 and model["semantic_chans"] == 0:
        raise ConfigError(f"{where}.semfirst_delta_t: > 0 needs semantic_chans > 0")


def _check_model(data: dict, source: str) -> None:
    check_model_section(data, f"{source}: model")


def _check_experiment(data: dict, source: str) -> None:
    for name, run in data.get("models", {}).items():
        check_model_section(run["model"], f"{source}: models.{name}.model")


_CROSS_CHECKS = {"model": (_check_model,), "experiment": (_check_experiment,)}


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_experiment(path) -> dict:
    """Load and validate an experiment file (config/toy.yaml, config/paper.yaml, ...), with the
    replicate models and runs of its `replication` section spelled out, so every command reads them
    as any other model or run."""
    from sfd.workflow.matrix import expand_replication  # the matrix builds on this module

    return expand_replication(validate(load_yaml(path), "experiment", source=str(path)), str(path))


def load_model_section(path) -> dict:
    """Load the `model:` section of an official SFD config (or of one of our experiment files)."""
    data = load_yaml(path)
    if "model" not in data:
        raise ConfigError(f"{path}: no `model:` section")
    return validate(data["model"], "model", source=f"{path}: model")


def add_arguments(parser) -> None:
    parser.add_argument("config", help="experiment YAML (e.g. config/toy.yaml)")


def main(args) -> int:
    print(json.dumps(load_experiment(args.config), indent=2, sort_keys=False))
    return 0
