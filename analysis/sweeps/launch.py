"""Sweeps: a spec expanded into run directories, launched as one submitit job array per launch.

    sweep = Sweep.from_yaml("jobs/fmnist_demo.yaml", root="sweeps")
    sweep.launch()                     # SLURM where a cluster answers, local processes elsewhere
    sweep.status()                     # one row per run (fresh scheduler state + progress)
    sweep.monitor()                    # a live widget for JupyterLab; the kernel stays free
    sweep.wait(timeout=3600)
    sweep.resubmit()                   # failed, cancelled, timed-out or never-started runs
    frame = sweep.collect()

The sweep folder holds everything needed to come back to it from a new process
(`Sweep.open(folder)`): spec.yaml, runs.json/runs.csv (the sampled run table), runs/<run id>/
(one run directory each), code/<launch>/analysis (the code each launch runs), submitit/ (job
files and logs) and launches.json (job ids -> run ids for every launch).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis import config as C
from analysis import rundir
from analysis.errors import ConfigError, one_of
from analysis.sweeps.spec import Spec

# Launch options (spec `launch:` section or keyword arguments of launch()/resubmit()).
LAUNCH_KEYS = {
    "cluster": (str, type(None)),  # None/"auto": SLURM when sinfo answers, else "local"; or "slurm", "local"
    "parallel": int,  # local: processes at once (default 1); SLURM: array parallelism (default unlimited)
    "runs_per_job": int,  # SLURM: runs trained one after another by one array task (default 1)
    "batch_runs": int,  # runs trained together by analysis.batched.train_group when it exists (default 1)
    "max_retries": int,  # resubmit() relaunches a run at most this often (default 3)
    "timeout_min": int,  # job time limit in minutes (default 24 h)
    "partition": str, "account": str, "qos": str, "constraint": str,
    "array_parallelism": int,  # SLURM name for `parallel`
    "gpus_per_node": int, "cpus_per_task": int, "mem_gb": (int, float), "nodes": int,
    "tasks_per_node": int,  # default: one task per GPU (DDP), else 1
    "additional": dict,  # extra sbatch options, e.g. {exclude: "node[1-2]", reservation: "x"}
    "signal_delay_s": int,  # SLURM: USR2 this long before the time limit (default 120)
    "name": str,  # job name (default: the sweep's name)
}
CLUSTERS = ("auto", "slurm", "local")


def check_launch(opts: dict) -> None:
    """Raise a one-line ConfigError for an unknown launch option or a value of the wrong type."""
    for k, v in opts.items():
        if k not in LAUNCH_KEYS:
            raise one_of("launch option", k, list(LAUNCH_KEYS))
        types = LAUNCH_KEYS[k] if isinstance(LAUNCH_KEYS[k], tuple) else (LAUNCH_KEYS[k],)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
            raise ConfigError(f"launch option {k} must be {' or '.join(t.__name__ for t in types)}, got {v!r}")
        if k == "cluster" and v is not None and v not in CLUSTERS:
            raise one_of("launch cluster", v, CLUSTERS)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < (0 if k == "gpus_per_node" else 1):
            raise ConfigError(f"launch option {k} must be >= {0 if k == 'gpus_per_node' else 1}, got {v}")


def detect_cluster() -> str:
    """"slurm" when a SLURM controller answers (sinfo), else "local"."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "local"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return "local"
    return "slurm" if out.returncode == 0 and out.stdout.strip() else "local"


def snapshot_code(dest: Path, source: Path | None = None) -> Path:
    """Copy the `analysis` package (source: its folder; default the imported one) to dest/analysis;
    return dest, the folder to put first on sys.path."""
    import analysis

    source = Path(source) if source else Path(analysis.__file__).parent
    if not (source / "__init__.py").is_file():
        raise ConfigError(f"code source {source} is not a Python package folder (no __init__.py)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp / "analysis", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    tmp.rename(dest)
    return dest


def split(items: list, n: int) -> list[list]:
    """Split into n contiguous, nearly equal, non-empty parts (fewer if there are fewer items)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        j = i + size + (k < extra)
        out.append(items[i:j])
        i = j
    return [part for part in out if part]


class Sweep:
    """A sweep folder: its spec, run table, run directories, launches and jobs."""

    def __init__(self, sweep_dir: str | Path):
        """Open an existing sweep folder (written by from_yaml/from_dict)."""
        self.dir = Path(sweep_dir).resolve()
        table = rundir.read_json(self.dir / "runs.json")
        spec_path = self.dir / "spec.yaml"
        if table is None or not spec_path.is_file():
            raise ConfigError(f"{sweep_dir} is not a sweep folder (no spec.yaml/runs.json)")
        self.spec_dict = yaml.safe_load(spec_path.read_text())
        self.table = table["runs"]
        self.run_ids = [r["run"] for r in self.table]
        self.configs = {r["run"]: C.RunConfig().replace(r["overrides"]) for r in self.table}
        self._processes: dict[str, Any] = {}  # local job id -> Popen, for jobs launched by this object

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, root: str | Path = "sweeps", name: str | None = None) -> "Sweep":
        """Validate the spec, sample its runs and write the sweep folder root/<name> (idempotent)."""
        return cls.create(Spec.from_dict(d, name=name), root)

    @classmethod
    def from_yaml(cls, path: str | Path, root: str | Path = "sweeps") -> "Sweep":
        return cls.create(Spec.from_yaml(path), root)

    @classmethod
    def open(cls, sweep_dir: str | Path) -> "Sweep":
        return cls(sweep_dir)

    @classmethod
    def create(cls, spec: Spec, root: str | Path = "sweeps") -> "Sweep":
        """Write spec.yaml, runs.json, runs.csv and each run's config.yaml under root/<spec.name>.
        An existing folder is reused when it holds the same spec; another spec is refused."""
        folder = Path(root) / spec.name
        spec_text = yaml.safe_dump(spec.raw, sort_keys=False)
        if (folder / "spec.yaml").is_file():
            old = yaml.safe_load((folder / "spec.yaml").read_text())
            if old != yaml.safe_load(spec_text):
                raise ConfigError(f"{folder} holds a sweep with another spec; use another name or root, "
                                  "or delete that folder")
        runs = spec.runs()
        folder.mkdir(parents=True, exist_ok=True)
        for row in runs:
            d = folder / "runs" / row["run"]
            d.mkdir(parents=True, exist_ok=True)
            if not (d / rundir.CONFIG).is_file():
                rundir.write_atomic(d / rundir.CONFIG, row["cfg"].to_yaml().encode())
        table = [{"run": r["run"], "run_dir": f"runs/{r['run']}", "overrides": r["overrides"],
                  "sampled": r["sampled"]} for r in runs]
        rundir.write_json(folder / "runs.json", {"name": spec.name, "dropped_duplicates": spec.dropped,
                                                 "runs": table})
        flat = pd.DataFrame([{"run": r["run"], "run_dir": r["run_dir"], **r["overrides"]} for r in table])
        rundir.write_atomic(folder / "runs.csv", flat.to_csv(index=False).encode())
        rundir.write_atomic(folder / "spec.yaml", spec_text.encode())
        sweep = cls(folder)
        sweep.spec = spec
        return sweep

    # -- records --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def launches(self) -> list[dict]:
        """Every launch so far: id, time, cluster, code, options and jobs [{job_id, runs}]."""
        return (rundir.read_json(self.dir / "launches.json") or {}).get("launches", [])

    def _save_launches(self, launches: list[dict]) -> None:
        rundir.write_json(self.dir / "launches.json", {"launches": launches})

    def run_dir(self, run: str) -> Path:
        return self.dir / "runs" / run

    def __repr__(self) -> str:
        return f"Sweep({str(self.dir)!r}, runs={len(self.run_ids)}, launches={len(self.launches)})"

    # -- launching ------------------------------------------------------------------------------
    def launch_options(self, **overrides) -> dict:
        """The spec's launch section with keyword overrides (None values ignored), checked."""
        opts = {**(self.spec_dict.get("launch") or {}), **{k: v for k, v in overrides.items() if v is not None}}
        check_launch(opts)
        return opts

    def launch(self, runs: list[str] | None = None, wait: bool = False, timeout: float | None = None,
               code: str | Path | None = None, **options) -> list[str]:
        """Launch the runs that are not complete and not already queued or running (all of `runs`,
        default every run) as one job array; return the new job ids. Returns at once unless wait.

        options: see LAUNCH_KEYS (cluster, parallel, partition, gpus_per_node, ...); code: the
        `analysis` package folder to snapshot (default the imported one)."""
        opts = self.launch_options(**options)
        wanted = list(runs) if runs is not None else list(self.run_ids)
        unknown = [r for r in wanted if r not in self.configs]
        if unknown:
            raise one_of("run", unknown[0], self.run_ids[:5] + (["..."] if len(self.run_ids) > 5 else []))
        status = self.status() if self.launches else None
        busy = set() if status is None else set(status.loc[status["state"].isin(["PENDING", "RUNNING"]), "run"])
        todo = [r for r in wanted if not rundir.is_complete(self.run_dir(r)) and r not in busy]
        ids = self._submit(todo, opts, code) if todo else []
        if wait:
            self.wait(timeout=timeout, poll=2.0)
        return ids

    def _submit(self, todo: list[str], opts: dict, code) -> list[str]:
        import cloudpickle
        import submitit

        from analysis.sweeps import boot

        cluster = opts.get("cluster") or "auto"
        cluster = detect_cluster() if cluster == "auto" else cluster
        launches = self.launches
        lid = len(launches)
        code_dir = snapshot_code(self.dir / "code" / f"launch-{lid:03d}", code)
        if cluster == "local":
            groups = split(todo, opts.get("parallel", 1))
        else:
            per = opts.get("runs_per_job", 1)
            groups = [todo[i:i + per] for i in range(0, len(todo), per)]
        executor = submitit.AutoExecutor(folder=self.dir / "submitit", cluster=cluster)
        executor.update_parameters(**self._executor_params(opts, cluster))
        cloudpickle.register_pickle_by_value(boot)
        try:
            fn = boot.GroupJob(str(code_dir))
            run_dirs = [[str(self.run_dir(r)) for r in g] for g in groups]
            jobs = executor.map_array(fn, run_dirs, [opts.get("batch_runs", 1)] * len(groups))
        finally:
            cloudpickle.unregister_pickle_by_value(boot)
        for job in jobs:
            if getattr(job, "_process", None) is not None:
                self._processes[job.job_id] = job._process
        launches.append({"launch": lid, "time": datetime.now().isoformat(timespec="seconds"), "cluster": cluster,
                         "code": str(code_dir.relative_to(self.dir)), "options": opts,
                         "jobs": [{"job_id": str(j.job_id), "runs": g} for j, g in zip(jobs, groups)],
                         "cancelled": []})
        self._save_launches(launches)
        return [str(j.job_id) for j in jobs]

    def _executor_params(self, opts: dict, cluster: str) -> dict:
        gpus = opts.get("gpus_per_node", 0)
        params: dict[str, Any] = {
            "name": opts.get("name", self.name),
            "timeout_min": opts.get("timeout_min", 24 * 60),
            "tasks_per_node": opts.get("tasks_per_node", max(gpus, 1)),
        }
        if gpus:
            params["gpus_per_node"] = gpus
        if cluster == "slurm":
            slurm = {"partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
                     "constraint": "slurm_constraint", "additional": "slurm_additional_parameters"}
            params.update({v: opts[k] for k, v in slurm.items() if k in opts})
            for k in ("cpus_per_task", "mem_gb", "nodes"):
                if k in opts:
                    params[k] = opts[k]
            parallel = opts.get("array_parallelism", opts.get("parallel"))
            if parallel:
                params["slurm_array_parallelism"] = parallel
            params["slurm_signal_delay_s"] = opts.get("signal_delay_s", 120)
        return params

    # -- watching -------------------------------------------------------------------------------
    def status(self):
        """StatusFrame, one row per run: state (NOT_LAUNCHED, PENDING, RUNNING, COMPLETED, FAILED,
        CANCELLED, TIMEOUT, ...), result, job, attempts, epoch progress, latest metrics, log tail."""
        from analysis.sweeps.status import status_frame

        return status_frame(self)

    def monitor(self, interval: float = 5.0, **options):
        """A SweepMonitor widget of this sweep (display it in a notebook cell): it refreshes itself
        from a background thread every `interval` seconds until no run is pending or running, so
        the kernel stays free. options: see analysis.widgets.SweepMonitor."""
        from analysis.widgets import SweepMonitor

        return SweepMonitor(self, interval=interval, **options)

    def wait(self, timeout: float | None = None, poll: float = 5.0, runs: list[str] | None = None):
        """Block until no run (of `runs`, default all) is PENDING or RUNNING (or UNKNOWN while sacct
        fails); return the final status. Raises TimeoutError naming the unfinished runs after `timeout` seconds."""
        start = time.monotonic()
        while True:
            status = self.status()
            sel = status if runs is None else status[status["run"].isin(runs)]
            active = sel[sel["state"].isin(["PENDING", "RUNNING", "UNKNOWN"])]  # UNKNOWN: sacct failed
            if active.empty:
                return status
            if timeout is not None and time.monotonic() - start > timeout:
                names = ", ".join(active["run"].head(5)) + (" ..." if len(active) > 5 else "")
                raise TimeoutError(f"{len(active)} run(s) still pending/running after {timeout:.0f} s: {names}")
            time.sleep(poll)

    def cancel(self, runs: list[str] | None = None) -> list[str]:
        """Cancel the jobs of the given runs (default: all) that are pending or running; return the
        cancelled job ids. A job training a group of runs is cancelled as a whole."""
        import os
        import signal

        from analysis.sweeps.status import RUNNING, WAITING

        status = self.status()
        sel = status if runs is None else status[status["run"].isin(runs)]
        job_ids = sorted({j for j, s in zip(sel["job_id"], sel["job_state"]) if j and s in WAITING + RUNNING})
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
                    proc = self._processes.get(jid)
                    try:
                        if proc is not None:
                            proc.send_signal(signal.SIGINT)
                        else:
                            os.kill(int(jid), signal.SIGINT)
                    except ProcessLookupError:
                        pass
                launch["cancelled"] = sorted(set(launch.get("cancelled", [])) | set(mine))
        self._save_launches(launches)
        return job_ids

    def resubmit(self, max_retries: int | None = None, wait: bool = False, timeout: float | None = None,
                 code: str | Path | None = None, **options) -> list[str]:
        """Relaunch the runs that failed, were cancelled, timed out or never started, unless they were
        launched max_retries + 1 times already (warning naming them); return the new job ids."""
        from analysis.sweeps.status import KEEP

        opts = self.launch_options(**options)
        cap = max_retries if max_retries is not None else opts.get("max_retries", 3)
        status = self.status()
        retry = status[~status["state"].isin(KEEP)]
        over = retry[retry["attempts"] > cap]
        if len(over):
            warnings.warn(f"not resubmitted (launched {cap + 1} times already): {', '.join(over['run'])}",
                          stacklevel=2)
        todo = list(retry.loc[retry["attempts"] <= cap, "run"])
        ids = self._submit(todo, opts, code) if todo else []
        if wait:
            self.wait(timeout=timeout, poll=2.0)
        return ids

    def collect(self, **kwargs) -> pd.DataFrame:
        """The sweep's results table (see analysis.sweeps.results.collect)."""
        from analysis.sweeps.results import collect

        return collect(self.dir, **kwargs)
