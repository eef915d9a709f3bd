"""The local back-end overrides submitit's private LocalExecutor._submit_command: these tests fail
when submitit changes what that override relies on (read from submitit's own source, no mocks)."""

import importlib.util
import inspect
import os
import re
import shlex
import sys
from types import SimpleNamespace

import pytest
import submitit
from submitit.local import local as submitit_local

from analysis.errors import UserError
from analysis.sweeps import local

ENV_KEY = re.compile(r"\b(SUBMITIT_[A-Z_]+|CUDA_VISIBLE_DEVICES)\b")


def test_submitit_is_of_the_supported_line_and_others_are_refused():
    local.check_submitit()  # the installed one
    assert submitit.__version__.startswith(local.SUBMITIT_LINE)
    with pytest.raises(UserError, match=r"submitit 1\.6\.0 is not supported.*<1\.6"):
        local.check_submitit("1.6.0")


def test_the_overridden_method_and_the_controller_are_as_relied_on(monkeypatch):
    assert "_submit_command" in vars(submitit_local.LocalExecutor)
    assert list(inspect.signature(submitit_local.LocalExecutor._submit_command).parameters) == ["self", "command"]
    assert {"folder", "job_id", "tasks", "process"} <= set(inspect.signature(submitit_local.LocalJob).parameters)
    assert importlib.util.find_spec(local.CONTROLLER) is not None
    source = inspect.getsource(submitit_local.start_controller)
    assert f'"-m", "{local.CONTROLLER}", str(folder)' in source  # how the controller is started
    for key in [k for k in os.environ if ENV_KEY.fullmatch(k)]:
        monkeypatch.delenv(key)  # only the variables controller_env sets itself
    ours = {k for k in local.controller_env("cmd", 1, range(0), 2.0, 30) if ENV_KEY.fullmatch(k)}
    assert set(ENV_KEY.findall(source)) == ours  # the same environment variables as submitit sets


def test_jobs_start_through_the_entry_that_checks_their_pickle(tmp_path):
    """A launch hands submitit's public `python` parameter its entry command (analysis.sweeps.boot); both
    executors put it in front of `-u -m submitit.core._submit FOLDER`, and submitit's checkpoint and
    job loading are the calls the entry and GroupJob.checkpoint rely on."""
    from submitit.core import job_environment, submission
    from submitit.slurm import slurm as submitit_slurm

    from analysis.sweeps import boot

    python = boot.entry_command(str(tmp_path / "code"))
    script = str(tmp_path / "code" / "analysis" / "sweeps" / "boot.py")
    for executor in (submitit_local.LocalExecutor, submitit_slurm.SlurmExecutor):
        assert "python" in inspect.signature(executor).parameters
        command = executor._submitit_command_str.fget(SimpleNamespace(python=python, folder=tmp_path))
        assert shlex.split(command) == [sys.executable, "-u", "-P", script, "-u", *boot.SUBMIT, str(tmp_path)]
    assert "delayed = utils.DelayedSubmission.load(paths.submitted_pickle)" in inspect.getsource(submission.process_job)
    source = inspect.getsource(job_environment._checkpoint)
    assert "ckpt_delayed.set_timeout(" in source and "ckpt_delayed.dump(tmp)" in source


SIGINT_PROBE = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job (`stemlab demo &`)
from analysis.sweeps.local import DetachedLocalExecutor

def handler_name():
    import signal
    return getattr(signal.getsignal(signal.SIGINT), "__name__", str(signal.getsignal(signal.SIGINT)))

executor = DetachedLocalExecutor(folder=sys.argv[1])
executor.update_parameters(timeout_min=2)
print(executor.submit(handler_name).result())
"""


def test_local_jobs_take_ctrl_c_even_when_their_launcher_ignores_it(tmp_path):
    """cancel stops local jobs with SIGINT: a job launched from a process that ignores SIGINT (a background
    job of a shell) gets Python's default handler back, not the inherited "ignore"."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", SIGINT_PROBE, str(tmp_path / "jobs")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "default_int_handler"
