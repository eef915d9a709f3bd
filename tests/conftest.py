"""Shared pytest set-up; fixtures live in tests/fixtures_*.py and are registered here."""

pytest_plugins = ["tests.fixtures_real", "tests.fixtures_notebooks", "tests.fixtures_slurm"]


def pytest_collection_modifyitems(config, items):
    """A pytest-xdist group per test file (`make test` runs two workers with --dist loadgroup): the
    tests of a file stay together on one worker, with their fixtures and order. (The SLURM tests run
    in a second pass of their own, see the Makefile.)"""
    import pytest

    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.path.name))


def pytest_configure(config):
    """Ctrl-C reaches the processes the tests start, however pytest was started. A shell starts a
    background job (`make test &` in a script) with SIGINT ignored, and an ignored signal stays ignored
    in every child; the Ctrl-C tests, `Sweep.cancel` of a local trainer and JupyterLab's kernel then
    never see it. A handler (unlike "ignore") is reset to the default in each child that execs."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
