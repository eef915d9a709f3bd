"""Shared pytest set-up; fixtures live in tests/fixtures_*.py and are registered here."""

pytest_plugins = ["tests.fixtures_real", "tests.fixtures_notebooks", "tests.fixtures_slurm"]


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist (`make test` runs two workers with --dist loadgroup): the tests of a
    file stay together on one worker (its fixtures and order with them), and every test that uses
    the local SLURM cluster runs on one worker, so no two of them share its two CPUs at once."""
    import pytest

    for item in items:
        group = "slurm" if item.get_closest_marker("slurm") else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
