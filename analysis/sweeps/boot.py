"""The callable a sweep job runs. It is pickled by value (not by module reference), so the job
process can put the sweep's code snapshot first on sys.path before anything of `analysis` is
imported: jobs run the code that was launched, whatever happens to the source tree afterwards.

Only the standard library and submitit may be imported at module level here.
"""

from __future__ import annotations

import os
import sys

import submitit


def use_code(code_dir: str) -> str:
    """Make `import analysis` resolve to the package under code_dir; return where it resolved."""
    code_dir = os.path.abspath(code_dir)
    sys.path[:] = [code_dir] + [p for p in sys.path if os.path.abspath(p or ".") != code_dir]
    for name in [n for n in sys.modules if n == "analysis" or n.startswith("analysis.")]:
        path = getattr(sys.modules[name], "__file__", None) or ""
        if not os.path.abspath(path).startswith(code_dir + os.sep):
            del sys.modules[name]
    import analysis

    return os.path.dirname(os.path.abspath(analysis.__file__))


class GroupJob(submitit.helpers.Checkpointable):
    """One job of a sweep: train a group of run directories with the snapshot in `code_dir`.

    On preemption or timeout submitit calls checkpoint(), which resubmits this same call; the
    requeued job skips finished runs and resumes the interrupted one from its checkpoint."""

    def __init__(self, code_dir: str):
        self.code_dir = code_dir

    def __call__(self, run_dirs: list[str], batch_runs: int = 1) -> dict[str, str]:
        where = use_code(self.code_dir)
        print(f"analysis code: {where}", flush=True)
        from analysis.sweeps.job import run_group

        return run_group(run_dirs, batch_runs)
