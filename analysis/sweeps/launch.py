"""Sweeps: a spec expanded into run directories, launched as one submitit job array per launch.

    sweep = Sweep.from_yaml("jobs/fmnist_demo.yaml", root="sweeps")
    sweep.launch()                     # SLURM where a cluster answers, local processes elsewhere
    sweep.status()                     # one row per run (fresh scheduler state + progress)
    sweep.monitor()                    # a live widget for JupyterLab; the kernel stays free
    sweep.wait(timeout=3600, callback=print)   # callback: each fresh status frame
    sweep.resubmit()                   # failed, cancelled, timed-out or never-started runs
    frame = sweep.collect()

The sweep folder (analysis.sweeps.folder) holds everything needed to come back to it from a new
process (`Sweep.open(folder)`); `Sweep` adds the launcher: submitit executors, the launch lock,
waiting and cancelling (local processes through analysis.sweeps.local).

Nothing here unpickles a file of the sweep folder: states come from the scheduler (sacct), the
local job processes and the run directories (see analysis.sweeps.status). The jobs load only the
pickles their launch signed (analysis.sweeps.boot). Local jobs run in their
own session (analysis.sweeps.local), so a Ctrl-C in the launching terminal leaves them running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import rundir, trust
from analysis.errors import ConfigError, one_of
from analysis.sweeps.folder import SweepFolder
from analysis.sweeps.local import interrupt_job, stop_trainer
from analysis.sweeps.options import LaunchConfig
from analysis.rundir.reader import ACTIVE, FINAL, JOB_RUNNING, JOB_WAITING, KEEP
from analysis.sweeps.status import SUBMITIT, runs_state, submitit_folder


LAUNCH_LOCK = rundir.LAUNCH_LOCK


def detect_cluster() -> str:
    """ "slurm" when a SLURM controller answers (sinfo), else "local"."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "local"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return "local"
    return "slurm" if out.returncode == 0 and out.stdout.strip() else "local"


def fresh_private_folder(parent: Path, prefix: str) -> Path:
    """A new folder under `parent` for one launch's submitit job files, made by tempfile.mkdtemp: created
    here and now under a name nobody could have taken before, mode 0700, so no other user can plant a job
    pickle that the launch's jobs would load (a folder of another owner is refused in one line)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    st = os.lstat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{path} is not a private folder of this user; refused")
    return path


def snapshot_code(dest: Path, source: Path | None = None) -> Path:
    """Copy the `analysis` package (source: its folder; default the imported one) to dest/analysis;
    return dest, the folder to put first on sys.path."""
    import analysis

    source = Path(source) if source else Path(analysis.__file__).parent
    if not (source / "__init__.py").is_file():
        raise ConfigError(f"code source {source} is not a Python package folder (no __init__.py)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~rundir.umask())  # mkdtemp makes 0700; follow the umask like mkdir
        shutil.copytree(source, tmp / "analysis", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        tmp.rename(dest)
    except shutil.Error as e:  # copytree's list of failed files (a full disk): one line
        shutil.rmtree(tmp, ignore_errors=True)
        first = e.args[0][0] if e.args and isinstance(e.args[0], list) and e.args[0] else e
        why = first[2] if isinstance(first, tuple) and len(first) == 3 else str(first)
        raise ConfigError(f"cannot snapshot the code for this launch into {dest}: {why[:200]}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


class Sweep(SweepFolder):
    """A sweep folder (analysis.sweeps.folder.SweepFolder: spec, run table, run directories, launch
    records) and its launcher: launch and resubmit as submitit job arrays, status, wait, cancel."""

    def __init__(self, sweep_dir: str | Path):
        """Open an existing sweep folder (written by from_yaml/from_dict)."""
        super().__init__(sweep_dir)
        self._processes: dict[str, Any] = {}  # local job id -> Popen, for jobs launched by this object

    def local_processes(self) -> dict[str, Any]:
        """{local job id: Popen} of the local jobs this Sweep object started (their controllers)."""
        return dict(self._processes)

    # -- launching ------------------------------------------------------------------------------
    @contextmanager
    def _launching(self):
        """Hold the sweep's launch lock (.launch.lock): a second launch or resubmit of this sweep waits
        for the first, then sees its jobs and starts only what is still to do."""
        import fcntl

        trust.check_inside(self.dir, [self.dir / LAUNCH_LOCK])
        fd = rundir.open_lock_file(self.dir / LAUNCH_LOCK)  # a FIFO or device planted there: one line
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def launch_options(self, **overrides) -> LaunchConfig:
        """The spec's launch section with keyword overrides (None values ignored), checked and typed."""
        launch = self.spec_dict.get("launch") or {}
        if not isinstance(launch, dict):
            raise ConfigError(f"{self.dir}/spec.yaml: launch must be a mapping of launch options")
        return LaunchConfig.from_dict(launch).updated(**overrides)

    def launch(
        self,
        runs: list[str] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        code: str | Path | None = None,
        trust_code: bool = False,
        **options,
    ) -> list[str]:
        """Launch the runs that are not complete and not already queued or running (all of `runs`,
        default every run) as one job array; return the new job ids. Returns at once unless wait.
        A run whose folder a live trainer holds (its lock) counts as running and is never started twice.

        options: see analysis.sweeps.options.LaunchConfig (cluster, parallel, partition,
        gpus_per_node, ...); local jobs with parallel "auto" (the local default) train the runs whose
        train.threads is null with floor(cores / jobs) threads each (LaunchConfig.job_threads); code: the `analysis` package folder to snapshot (default the imported one).
        trust_code: allow stem import paths named by an opened sweep's runs (a sweep made from the
        caller's spec needs no flag); a stem's module inside the sweep is refused either way."""
        opts = self.launch_options(**options)
        wanted = list(runs) if runs is not None else list(self.run_ids)
        unknown = [r for r in wanted if r not in self.configs]
        if unknown:
            raise one_of("run", unknown[0], self.run_ids[:5] + (["..."] if len(self.run_ids) > 5 else []))
        with self._launching():
            state = {row["run"]: row["state"] for row in runs_state(self.dir, self.run_ids, self._processes)}
            todo = [r for r in wanted if state[r] not in (*FINAL, "pending", "running")]
            ids = self._submit(todo, opts, code, trust_code) if todo else []
        if wait:
            self.wait(timeout=timeout, poll=2.0)
        return ids

    def _submit(self, todo: list[str], opts: LaunchConfig, code, trust_code: bool) -> list[str]:
        import cloudpickle

        from analysis.sweeps import boot

        todo = [r for r in todo if rundir.lock_holder(self.run_dir(r)) is None]  # trained right now
        if not todo:
            return []
        trust.check_inside(
            self.dir,
            [
                self.dir / rundir.CODE,
                self.dir / SUBMITIT,
                self.dir / rundir.LAUNCHES,
                *(self.run_dir(r) / name for r in todo for name in rundir.WRITTEN),
            ],
        )
        stems = self._checked_stems(todo, trust_code)
        cluster = opts.cluster or "auto"
        cluster = detect_cluster() if cluster == "auto" else cluster
        groups = opts.jobs(todo, cluster)
        launches = self.launches
        lid = self._next_launch(launches)
        code_dir = snapshot_code(self.dir / rundir.CODE / f"launch-{lid:03d}", code)
        from analysis.models.registry import snapshot_stem_code  # users' stems named by import path

        snapshot_stem_code(code_dir, stems)
        jobs_dir = fresh_private_folder(self.dir / SUBMITIT, f"launch-{lid:03d}-")
        executor = self._executor(cluster, jobs_dir, code_dir, opts)
        key, n = boot.new_key(), len(groups)
        cloudpickle.register_pickle_by_value(boot)
        try:
            fn = boot.GroupJob(str(code_dir))
            run_dirs = [[str(self.run_dir(r)) for r in g] for g in groups]
            with _sigint_deferred():  # jobs started are on record in launches.json before a Ctrl-C lands
                with _environment(boot.KEY_ENV, key):  # what submitit hands the jobs it starts
                    jobs = executor.map_array(fn, run_dirs, [opts.batch_runs] * n, [opts.job_threads(cluster, n)] * n)
                for job in jobs:
                    if getattr(job, "_process", None) is not None:
                        self._processes[job.job_id] = job._process
                launches.append(
                    rundir.launch_record(
                        lid,
                        cluster,
                        [(str(j.job_id), g) for j, g in zip(jobs, groups)],
                        code=str(code_dir.relative_to(self.dir)),
                        submitit=str(jobs_dir.relative_to(self.dir)),
                        options=opts.to_dict(),
                    )
                )
                self._save_launches(launches)
                for job in jobs:  # signed once on record: a job whose launch is not recorded refuses to start
                    boot.sign(job.paths.submitted_pickle, key)
        finally:
            cloudpickle.unregister_pickle_by_value(boot)
        return [str(j.job_id) for j in jobs]

    def _next_launch(self, launches: list[dict]) -> int:
        """The next launch number: past every launch on record and every code snapshot already in the folder
        (a launch killed between its snapshot and its record leaves one behind)."""
        lid = max((l["launch"] + 1 for l in launches), default=0)
        while os.path.lexists(self.dir / rundir.CODE / f"launch-{lid:03d}"):
            lid += 1
        return lid

    def _executor(self, cluster: str, jobs_dir: Path, code_dir: Path, opts: LaunchConfig):
        """submitit's executor for one launch: its jobs start through the snapshot's boot.py, which checks
        each job's pickle against its launch's signature before anything is unpickled (analysis.sweeps.boot)."""
        import submitit

        from analysis.sweeps import boot
        from analysis.sweeps.local import DetachedLocalExecutor

        python = boot.entry_command(str(code_dir))  # submitit's `python`: what runs `-m submitit.core._submit`
        if cluster == "local":
            executor = DetachedLocalExecutor(folder=jobs_dir, python=python)
        else:
            executor = submitit.AutoExecutor(folder=jobs_dir, cluster=cluster, slurm_python=python)
        executor.update_parameters(**opts.executor_params(cluster, self.name))
        return executor

    def _checked_stems(self, todo: list[str], trust_code: bool) -> list:
        """The stems the jobs of `todo` will import, each vetted by the folder rule (analysis.trust):
        jobs train what each run's config.yaml says, so that file is read and checked (its data.root,
        and a stem import path allowed without trust_code only when it is the caller's own spec's)."""
        from analysis import config

        stems = []
        for r in todo:
            path = self.run_dir(r) / rundir.CONFIG
            cfg = config.load(path)
            trust.check_config(cfg, self.run_dir(r))
            own = self.spec is not None and cfg.model.stem == self.configs[r].model.stem
            trust.check_stem(cfg.model.stem, self.run_dir(r), trust_code or own, named_by=str(path))
            stems.append(cfg.model.stem)
        return stems

    # -- watching -------------------------------------------------------------------------------
    def status(self):
        """StatusFrame, one row per run: state (not_launched, pending, running, completed,
        diverged, failed, cancelled, timeout, ...), result, job, attempts, epoch progress, latest metrics, the live
        trainer (host:pid) and, for ended unfinished runs, a log tail (see analysis.sweeps.status)."""
        from analysis.sweeps.status import status_frame

        epochs = {r: cfg.train.epochs for r, cfg in self.configs.items()}
        return status_frame(self.dir, self.run_ids, epochs, self._processes)

    def _states(self) -> pd.DataFrame:
        """Per run: state, job and attempts (status() without the progress and metrics columns)."""
        return pd.DataFrame(runs_state(self.dir, self.run_ids, self._processes))

    def monitor(self, interval: float = 5.0, **options):
        """A SweepMonitor widget of this sweep (display it in a notebook cell): it refreshes itself
        from a background thread every `interval` seconds until no run is pending or running, so
        the kernel stays free. options: see analysis.widgets.SweepMonitor."""
        from analysis.widgets import SweepMonitor

        return SweepMonitor(self, interval=interval, **options)

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 5.0,
        runs: list[str] | None = None,
        callback=None,
        progress: bool = False,
    ):
        """Block until no run (of `runs`, default all) is pending or running (or unknown while sacct
        fails); return the final status. callback(status) is called with each fresh status frame
        (progress displays without a polling loop of their own); progress=True shows a line per
        change of the run counts and a bar of finished runs (analysis.sweeps.progress). Raises
        TimeoutError naming the unfinished runs after `timeout` seconds."""
        shown = None
        if progress and callback is None:
            from analysis.sweeps.progress import Progress

            shown = Progress(len(runs or self.run_ids), bar=True, file=sys.stdout)
            callback = shown if runs is None else (lambda status: shown(status[status["run"].isin(runs)]))
        try:
            return self._wait(timeout, poll, runs, callback)
        finally:
            if shown is not None:
                shown.close()

    def _wait(self, timeout, poll, runs, callback):
        start = time.monotonic()
        while True:
            status = self.status()
            if callback is not None:
                callback(status)
            sel = status if runs is None else status[status["run"].isin(runs)]
            active = sel[sel["state"].isin(ACTIVE)]
            if active.empty:
                return status
            if timeout is not None and time.monotonic() - start > timeout:
                names = ", ".join(active["run"].head(5)) + (" ..." if len(active) > 5 else "")
                raise TimeoutError(f"{len(active)} run(s) still pending/running after {timeout:.0f} s: {names}")
            time.sleep(poll)

    def still_running(self, status: pd.DataFrame, resume: str | None = None) -> str:
        """One line for an interrupted wait: what still runs or waits (from `status`, the last frame
        seen) and how to watch, cancel and resume it. resume: the command that picks the sweep up
        again (default: sweep resubmit)."""
        where = str(self.dir)
        resume = resume or f"python -m analysis sweep resubmit {where}"
        active = status[status["state"].isin(ACTIVE)]
        if active.empty:
            return f"interrupted; no run of {where} is running or queued; resume with: {resume}"
        jobs = sorted({str(j) for j in active["job_id"] if j})
        local = {str(j["job_id"]) for l in self.launches if l.get("cluster") != "slurm" for j in l["jobs"]}
        kind = "local processes" if set(jobs) <= local else "jobs"
        return (
            f"interrupted; {len(active)} of {len(status)} runs of {where} are still running or queued "
            f"({kind} {', '.join(jobs[:6])}{' ...' if len(jobs) > 6 else ''} go on in the background); "
            f"watch: python -m analysis sweep status {where} --wait; "
            f"stop: python -m analysis sweep cancel {where}; then resume with: {resume}"
        )

    def cancel(self, runs: list[str] | None = None) -> list[str]:
        """Cancel the jobs of the given runs (default: all) that are pending or running; return the
        cancelled job ids. A job training a group of runs is cancelled as a whole. A local trainer
        that outlived its job's controller (state running, job ended) is stopped directly."""
        status = self._states()
        sel = status if runs is None else status[status["run"].isin(runs)]
        job_ids = sorted({j for j, s in zip(sel["job_id"], sel["job_state"]) if j and s in JOB_WAITING + JOB_RUNNING})
        orphans = sel[(sel["state"] == "running") & ~sel["job_state"].isin(JOB_WAITING + JOB_RUNNING)]
        stopped = [j for run, j in zip(orphans["run"], orphans["job_id"]) if stop_trainer(self.run_dir(run)) and j]
        job_ids = sorted(set(job_ids) | set(stopped))
        if not job_ids:
            return []
        launches = self.launches
        for launch in launches:
            mine = [j["job_id"] for j in launch["jobs"] if j["job_id"] in job_ids]
            if not mine:
                continue
            if launch["cluster"] == "slurm":
                subprocess.run(["scancel", *mine], check=False, capture_output=True)
            else:
                for jid in mine:
                    if jid not in stopped:
                        interrupt_job(jid, submitit_folder(self.dir, launch), self._processes.get(jid))
                launch["cancelled"] = sorted(set(launch.get("cancelled", [])) | set(mine))
        self._save_launches(launches)
        return job_ids

    def resubmit(
        self,
        max_retries: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
        code: str | Path | None = None,
        trust_code: bool = False,
        **options,
    ) -> list[str]:
        """Relaunch the runs that failed, were cancelled, timed out or never started, unless they were
        launched max_retries + 1 times already (warning naming them); return the new job ids.
        trust_code: as for launch."""
        opts = self.launch_options(**options)
        cap = max_retries if max_retries is not None else opts.max_retries
        with self._launching():
            status = self._states()
            retry = status[~status["state"].isin(KEEP)]
            over = retry[retry["attempts"] > cap]
            if len(over):
                warnings.warn(
                    f"not resubmitted (launched {cap + 1} times already): {', '.join(over['run'])}", stacklevel=2
                )
            todo = list(retry.loc[retry["attempts"] <= cap, "run"])
            ids = self._submit(todo, opts, code, trust_code) if todo else []
        if wait:
            self.wait(timeout=timeout, poll=2.0)
        return ids

    def collect(self, **kwargs) -> pd.DataFrame:
        """The sweep's results table (see analysis.sweeps.results.collect)."""
        from analysis.sweeps.results import collect

        return collect(self.dir, **kwargs)


@contextmanager
def _environment(name: str, value: str):
    """os.environ[name] = value inside the block (submitit's local controllers and sbatch take this
    process's environment), restored after: the value reaches the jobs without being written to a file."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and deliver it when the block ends, so
    jobs just started are always on record. Only in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if caught and callable(previous):
        previous(signal.SIGINT, caught[0])
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt
