"""A sweep folder: a spec expanded into run directories, and the record of its launches.

root/<name>/ holds spec.yaml, runs.json/runs.csv (the sampled run table), runs/<run id>/ (one run
directory each), code/<launch>/analysis (the code each launch runs), submitit/ (job files and
logs) and launches.json (job ids -> run ids for every launch). `create` writes it (idempotent for
the same runs); opening it reads only those files, bounded (analysis.trust). The launcher on top
is analysis.sweeps.launch.Sweep.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from analysis import config as C
from analysis import rundir, trust
from analysis.errors import ConfigError, shown
from analysis.sweeps.spec import MAX_RUNS_ENV, Spec, max_runs


class SweepFolder:
    """A sweep folder: its spec, run table, run directories and the record of its launches."""

    def __init__(self, sweep_dir: str | Path):
        """Open an existing sweep folder (written by from_yaml/from_dict)."""
        self.dir = Path(sweep_dir).resolve()
        table = rundir.read_json(self.dir / rundir.RUN_TABLE)
        spec_path = self.dir / rundir.SPEC
        if table is None or not spec_path.is_file():
            raise ConfigError(f"{sweep_dir} is not a sweep folder (no spec.yaml/runs.json)")
        try:
            self.spec_dict = trust.load_yaml(spec_path)
            self.table = table["runs"]
            if len(self.table) > max_runs():
                raise ConfigError(
                    f"{sweep_dir}: runs.json lists {len(self.table)} runs, over the limit of "
                    f"{max_runs()} (set {MAX_RUNS_ENV} to allow more)"
                )
            self.run_ids = [valid_run_id(r["run"], sweep_dir) for r in self.table]
            self.configs = {r["run"]: C.RunConfig().replace(r["overrides"]) for r in self.table}
        except (yaml.YAMLError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{sweep_dir}: unreadable spec.yaml or runs.json (not written by this package)") from None
        if not isinstance(self.spec_dict, dict):
            raise ConfigError(f"{sweep_dir}: spec.yaml is not a sweep spec")
        self.spec: Spec | None = None  # the caller's Spec when made by create(); None when opened

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, root: str | Path = "sweeps", name: str | None = None) -> "SweepFolder":
        """Validate the spec, sample its runs and write the sweep folder root/<name> (idempotent)."""
        return cls.create(Spec.from_dict(d, name=name), root)

    @classmethod
    def from_yaml(cls, path: str | Path, root: str | Path = "sweeps") -> "SweepFolder":
        return cls.create(Spec.from_yaml(path), root)

    @classmethod
    def open(cls, sweep_dir: str | Path) -> "SweepFolder":
        return cls(sweep_dir)

    @classmethod
    def create(cls, spec: Spec, root: str | Path = "sweeps") -> "SweepFolder":
        """Write spec.yaml, runs.json, runs.csv and each run's config.yaml under root/<spec.name>.
        An existing folder is reused when the spec gives the same runs (ids, in order, and configs);
        a spec giving other runs (other values, or grid axes in another order) is refused."""
        folder = Path(root) / spec.name
        spec_text = yaml.safe_dump(spec.raw, sort_keys=False)
        runs = spec.runs()
        if (folder / rundir.SPEC).is_file() and not _same_runs(folder, runs):
            raise ConfigError(
                f"{folder} holds a sweep with another spec (other runs); use another name or root, "
                "or delete that folder"
            )
        trust.check_inside(
            folder,
            [folder / name for name in (rundir.SPEC, rundir.RUN_TABLE, rundir.RUN_TABLE_CSV)]
            + [folder / rundir.RUNS / row["run"] / rundir.CONFIG for row in runs],
        )
        folder.mkdir(parents=True, exist_ok=True)
        for row in runs:
            d = folder / rundir.RUNS / row["run"]
            d.mkdir(parents=True, exist_ok=True)
            if not (d / rundir.CONFIG).is_file():
                rundir.write_atomic(d / rundir.CONFIG, row["cfg"].to_yaml().encode())
            else:
                _check_run_config(d, row["cfg"])
        table = [
            {"run": r["run"], "run_dir": f"runs/{r['run']}", "overrides": r["overrides"], "sampled": r["sampled"]}
            for r in runs
        ]
        rundir.write_json(
            folder / rundir.RUN_TABLE, {"name": spec.name, "dropped_duplicates": spec.dropped, "runs": table}
        )
        flat = pd.DataFrame([{"run": r["run"], "run_dir": r["run_dir"], **r["overrides"]} for r in table])
        rundir.write_atomic(folder / rundir.RUN_TABLE_CSV, flat.to_csv(index=False).encode())
        rundir.write_atomic(folder / rundir.SPEC, spec_text.encode())
        sweep = cls(folder)
        sweep.spec = spec  # its configs are the caller's spec, not only what the folder says
        return sweep

    # -- records --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def launches(self) -> list[dict]:
        """Every launch so far, as rundir.launch_record writes them: id, time, cluster, code, submitit
        folder, options, jobs [{job_id, runs}] and the job ids cancelled since."""
        from analysis.sweeps.status import read_launches

        return read_launches(self.dir)

    def _save_launches(self, launches: list[dict]) -> None:
        """Write the launches on record; entries the file holds that are not well-formed stay as they were."""
        from analysis.sweeps.status import recorded_launches

        kept = [entry for entry in recorded_launches(self.dir) if rundir.launch_problem(entry) is not None]
        rundir.write_json(self.dir / rundir.LAUNCHES, {"launches": kept + launches})

    def run_dir(self, run: str) -> Path:
        return self.dir / rundir.RUNS / run

    def __repr__(self) -> str:
        return f"Sweep({str(self.dir)!r}, runs={len(self.run_ids)}, launches={len(self.launches)})"


def valid_run_id(run, sweep_dir) -> str:
    """A run id read from runs.json, checked by the rule sweep names follow (letters, digits, '-', '_',
    '.'; not starting with '.'), so no id names a folder outside runs/ (`../other`, `a/b`)."""
    ok = isinstance(run, str) and 0 < len(run) <= 200 and not run.startswith(".")
    if not ok or not run.replace("-", "").replace("_", "").replace(".", "").isalnum() or not run.isascii():
        raise ConfigError(
            f"{sweep_dir}: runs.json names a run {shown(run)}; run ids use letters, digits, '-', '_' and '.' "
            "and do not start with '.' (this folder was not written by this package)"
        )
    return run


def _check_run_config(run_dir: Path, cfg: C.RunConfig) -> None:
    """A reused run's config.yaml (what its job trains) must be the config the run table gives: equal in
    every key but those the trainer resolves (analysis.config.RUNTIME_KEYS); else one line naming the
    first key that differs."""
    try:
        held = C.load(run_dir / rundir.CONFIG)
    except ConfigError as e:
        raise ConfigError(f"{run_dir}: its config.yaml cannot be read ({e}); delete that run folder") from None
    diff = cfg.differences(held)
    if diff:
        key = diff[0]
        raise ConfigError(
            f"{run_dir / rundir.CONFIG} gives {key}={shown(held.flat()[key])} but the sweep's runs.json "
            f"{shown(cfg.flat()[key])}: the job would train another config than the sweep reports; delete that run "
            "folder (or restore its config.yaml)"
        )


def _same_runs(folder: Path, runs: list[dict]) -> bool:
    """True when folder/runs.json lists exactly these runs: the same ids in the same order, equal configs."""
    table = (rundir.read_json(folder / rundir.RUN_TABLE) or {}).get("runs")
    try:
        old = [(r["run"], C.RunConfig().replace(r["overrides"]).flat()) for r in table]
    except (TypeError, KeyError, AttributeError, ConfigError):
        return False
    return old == [(r["run"], r["cfg"].flat()) for r in runs]
