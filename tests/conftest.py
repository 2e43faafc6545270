import functools
import inspect
import os
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# .ci/run runs the tests on two pytest-xdist workers. A test module is one unit of work (its module
# fixtures are built once), and every module that copies the finished toy run (`toy_workspace`,
# built once per worker process) belongs to one unit, "toy-run", which is scheduled first: it is
# the longest chain (the toy DAG, then what reruns it). xdist's own `--dist loadgroup` marks do not
# group under pytest 9 (xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads), so the
# grouping is this scheduler's.
ROOT = Path(__file__).resolve().parents[1]


TOY_CALL = "toy_workspace("


@functools.cache
def _module_unit(module: str) -> str:
    return "toy-run" if TOY_CALL in (ROOT / module).read_text() else module


def unit_of(nodeid: str) -> str:
    """The unit of work of a test: its module's path from the repository root, or "toy-run"."""
    return _module_unit(nodeid.split("::", 1)[0])


def copies_the_toy_run(item) -> bool:
    return "toy" in item.fixturenames or TOY_CALL in inspect.getsource(item.function)


# The two longest units, started at once (one per worker); the rest follow in collection order.
FIRST = ("toy-run", "tests/test_rehearsal.py")


def pytest_collection_modifyitems(config, items):
    """The longest units first, and in the toy-run unit the tests that copy the run (the first one
    builds it)."""

    def rank(item):
        unit = unit_of(item.nodeid)
        return (FIRST.index(unit) if unit in FIRST else len(FIRST), not copies_the_toy_run(item))

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ByUnit(config, log)
