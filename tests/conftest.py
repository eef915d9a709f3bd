"""Shared pytest set-up; fixtures live in tests/fixtures_*.py and are registered here."""

pytest_plugins = ["tests.fixtures_real", "tests.fixtures_notebooks", "tests.fixtures_slurm"]


def pytest_collection_modifyitems(config, items):
    """A pytest-xdist group per test file (`make test` runs two workers with --dist loadgroup): the
    tests of a file stay together on one worker, with their fixtures and order. (The SLURM tests run
    in a second pass of their own, see the Makefile.)"""
    import pytest

    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.path.name))
