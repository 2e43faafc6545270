import os

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """For pytest-xdist's `--dist loadgroup` (.ci/run): a test module is one unit of work, so its
    module fixtures are built on one worker only, and the tests on the toy run (ON_TOY_RUN) come
    first, so that the longest chain (the toy DAG, then what reruns it) starts at once."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group").args[0] != "toy-run")
