"""Shared pytest set-up; fixtures live in tests/fixtures_*.py and are registered here."""

pytest_plugins = ["tests.fixtures_real", "tests.fixtures_notebooks", "tests.fixtures_slurm"]
