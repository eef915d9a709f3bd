"""The user-error types are siblings under UserError (the CLI prints any as one line: see
test_run_folder's one_line_error cases)."""

from analysis import rundir
from analysis.errors import CheckpointError, ConfigError, RunLocked, UserError


def test_error_kinds_are_siblings_under_user_error():
    for kind in (ConfigError, CheckpointError, RunLocked):
        assert issubclass(kind, UserError)
    assert not issubclass(CheckpointError, ConfigError) and not issubclass(RunLocked, ConfigError)
    assert issubclass(ConfigError, ValueError)  # bad values stay ValueErrors for callers that catch those
    assert rundir.CheckpointError is CheckpointError and rundir.RunLocked is RunLocked
