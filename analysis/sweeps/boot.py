"""The callable a sweep job runs, and the entry that checks a job's pickle before submitit loads it.

GroupJob is pickled by value (not by module reference), so the job process can put the sweep's code
snapshot first on sys.path before anything of `analysis` is imported: jobs run the code that was launched,
whatever happens to the source tree afterwards.

Job pickles: submitit starts a job as `PYTHON -u -m submitit.core._submit FOLDER`, which unpickles
FOLDER/<job id>_submitted.pkl. A sweep hands submitit `python -u -P CODE/analysis/sweeps/boot.py` as
PYTHON (submitit's `python` parameter, the command that runs Python), so this file of the launch's code
snapshot runs first (-P: neither its folder nor the working folder goes on sys.path). Each launch draws a
random key and hands it to its jobs in their environment (KEY_ENV; it is written to no file). When
submitit has written a job's pickle, the launch writes its HMAC-SHA256 under that key next to it
(`<pickle>.hmac`); a job that checkpoints for a requeue signs the pickle it writes the same way. Before
anything is unpickled the entry reads the pickle and its tag (waiting up to TAG_WAIT_S for the tag) and
refuses in one line, exit status 2, when the key or tag is missing or the tag differs; otherwise submitit
runs the job. Left open: submitit reads the file again after the check, so a process of the same user
swapping it in that instant is not caught (nobody else can write the launch's 0700 folder).

Only the standard library and submitit may be imported at module level here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
import stat
import sys
import time
from pathlib import Path

import submitit

KEY_ENV = "STEMLAB_JOB_KEY"  # the launch's key, in its jobs' environment
TAG_SUFFIX = ".hmac"  # <job id>_submitted.pkl.hmac: the pickle's HMAC-SHA256 under the key, hex
TAG_WAIT_S = 120.0  # a job may start before its launch has signed its pickle
MAX_PICKLE_BYTES = 1 << 30  # submitit's own limit (max_pickle_size_gb)
SUBMIT = ["-m", "submitit.core._submit"]  # how submitit's command goes on after the `python` it is given


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


def entry_command(code_dir: str) -> str:
    """The command a launch hands submitit to run Python for its jobs: this file of its code snapshot."""
    script = os.path.join(os.path.abspath(code_dir), "analysis", "sweeps", "boot.py")
    return " ".join([shlex.quote(sys.executable), "-u", "-P", shlex.quote(script)])


def new_key() -> str:
    """A fresh random key for one launch (hex)."""
    return secrets.token_hex(32)


def pickle_tag(data: bytes, key: str) -> str:
    """The HMAC-SHA256 of a job pickle's bytes under the launch's key, hex."""
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


def tag_path(pickle_path: str | Path) -> Path:
    return Path(f"{pickle_path}{TAG_SUFFIX}")


def sign(pickle_path: str | Path, key: str, data: bytes | None = None) -> None:
    """Write the tag of a job pickle (its bytes as read now, or `data`) next to it, atomically."""
    data = read_pickle(pickle_path) if data is None else data
    tag = tag_path(pickle_path)
    tmp = tag.with_name(f".{tag.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pickle_tag(data, key) + "\n")
    os.replace(tmp, tag)


def read_pickle(path: str | Path, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """A job pickle's (or tag's) bytes: a regular file, not through a link, of at most `limit` bytes; else
    OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is over {limit} bytes")
    return data


def pickle_problem(pickle_path: str | Path, key: str | None, wait_s: float = TAG_WAIT_S) -> str | None:
    """Why the job pickle must not be loaded (None: it is the one its launch wrote, by its tag)."""
    if not key:
        return f"no {KEY_ENV} in the job's environment"
    tag = tag_path(pickle_path)
    deadline = time.monotonic() + wait_s
    while not tag.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        data = read_pickle(pickle_path)
        expected = read_pickle(tag, 200).decode("ascii", errors="replace").strip()
    except OSError as e:
        return str(e) if e.strerror is None else f"{e.filename}: {e.strerror}"
    if not hmac.compare_digest(pickle_tag(data, key), expected):
        return f"{pickle_path} is not the pickle its launch wrote (its HMAC-SHA256 differs)"
    return None


def main(argv: list[str]) -> int:
    """The job's entry (module doc): check the job's pickle, then let submitit run the job."""
    if argv[-3:-1] != SUBMIT:
        print(f"usage: {argv[0]} [python options] {' '.join(SUBMIT)} FOLDER", file=sys.stderr)
        return 2
    folder = argv[-1]
    os.environ["SUBMITIT_FOLDER"] = folder
    path = submitit.JobEnvironment().paths.submitted_pickle
    problem = pickle_problem(path, os.environ.get(KEY_ENV))
    if problem:
        print(f"refused to load the job: {problem}; nothing was unpickled", file=sys.stderr, flush=True)
        return 2
    from submitit.core.submission import process_job

    process_job(folder)
    return 0


class SignedSubmission:
    """What GroupJob.checkpoint hands submitit: the resubmitted call, whose pickle is signed with the
    job's key as submitit writes it, so the requeued job accepts it."""

    def __init__(self, delayed):
        self.delayed = delayed

    def set_timeout(self, timeout_min: int, max_num_timeout: int) -> None:
        self.delayed.set_timeout(timeout_min, max_num_timeout)

    def dump(self, path: str | Path) -> None:
        self.delayed.dump(path)  # a temporary file submitit then renames to the job's pickle
        key = os.environ.get(KEY_ENV)
        if key:
            sign(submitit.JobEnvironment().paths.submitted_pickle, key, read_pickle(path))


class GroupJob(submitit.helpers.Checkpointable):
    """One job of a sweep: train a group of run directories with the snapshot in `code_dir`.

    On preemption or timeout submitit calls checkpoint(), which resubmits this same call; the
    requeued job skips finished runs and resumes the interrupted one from its checkpoint."""

    def __init__(self, code_dir: str):
        self.code_dir = code_dir

    def __call__(self, run_dirs: list[str], batch_runs: int = 1, threads: int | None = None) -> dict[str, str]:
        where = use_code(self.code_dir)
        print(f"analysis code: {where}", flush=True)
        from analysis.sweeps.job import run_group

        return run_group(run_dirs, batch_runs, threads)

    def checkpoint(self, *args, **kwargs) -> SignedSubmission:
        return SignedSubmission(super().checkpoint(*args, **kwargs))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
