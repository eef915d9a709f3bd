"""Collect a sweep (or any folder of run directories) into one DataFrame, one row per run.

Columns (a contract the figures are written against): run, run_dir, status ("completed",
"diverged", "failed", "running", "pending"), state (the run state that Sweep.status() and the monitor
show, from the same reader, analysis.rundir.reader; "unknown" where the scheduler was not asked:
scheduler=False or a folder that is not a sweep), reason, model (e.g. "ViT_C-fmnist_tiny", "ViT_P-4GF"),
preset, stem, optimizer, epochs, lr (effective, for the run's batch), wd, batch_size, seed, error
(final test top-1 %, 100 when diverged, NaN when unfinished/failed), best_error, top5_error,
ema_error, diverged, epochs_done, seconds, params, flops, then cfg.<section>.<key> for every config
key and each sampled hyperparameter under its dotted key (e.g. optim.lr as sampled, for ref_batch).

Missing or corrupt run directories are skipped or reported as failed with a warning naming each.
Rows of run directories are cached in <folder>/.collect_cache.json, keyed by rundir.file_key (inode,
size, mtime) of config.yaml, result.json and metrics.jsonl, so re-collecting a large sweep reads only what changed.
The cache is JSON (NaN kept as NaN; ints, floats, bools, strings and None keep their types, so a
cached row equals a fresh one); nothing of a sweep folder is ever unpickled, so collecting someone
else's folder runs no code from it. Scheduler states come from analysis.sweeps.status.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import yaml

from analysis import config as C
from analysis import rundir
from analysis.errors import ConfigError, shown
from analysis.names import model_name, stem_of_config

CACHE = rundir.COLLECT_CACHE
CACHE_VERSION = 3  # 3: files keyed by rundir.file_key (inode, size, mtime)
CACHE_BYTES = 64 << 20  # a larger cache is ignored (rebuilt from the run folders)
COLUMNS = [
    "run",
    "run_dir",
    "status",
    "state",
    "reason",
    "model",
    "preset",
    "stem",
    "optimizer",
    "epochs",
    "lr",
    "wd",
    "batch_size",
    "seed",
    "error",
    "best_error",
    "top5_error",
    "ema_error",
    "diverged",
    "epochs_done",
    "seconds",
    "params",
    "flops",
]


def _nan(v) -> float:
    """A number of a result or metrics record as float; NaN when missing or not a number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _config_fields(cfg: C.RunConfig) -> dict:
    """The row fields that come from a run's config (not its result files)."""
    stem = stem_of_config(cfg)
    return {
        "model": model_name(cfg.model.preset, stem),
        "preset": cfg.model.preset,
        "stem": stem,
        "optimizer": cfg.optim.name,
        "epochs": cfg.train.epochs,
        "lr": cfg.effective_lr(),
        "wd": cfg.optim.weight_decay,
        "batch_size": cfg.train.batch_size,
        "seed": cfg.train.seed,
        **{f"cfg.{k}": v for k, v in cfg.flat().items()},
    }


def _cached_row_ok(row: dict) -> bool:
    """Whether a cached row's result fields are what a result.json could give (the cache is a folder's
    data like any other): errors NaN or in [0, 100], counts NaN or finite >= 0, a known status."""

    def number(v, high=math.inf) -> bool:  # what collect makes of a result's number: NaN when missing
        return isinstance(v, float) and math.isnan(v) or rundir.number_in(v, 0, high)

    return (
        row.get("status") in (*rundir.STATUSES, None)
        and isinstance(row.get("reason"), (str, type(None)))
        and isinstance(row.get("diverged"), bool)
        and isinstance(row.get("_started"), bool)
        and isinstance(row.get("epochs_done"), int)
        and not isinstance(row.get("epochs_done"), bool)
        and row["epochs_done"] >= 0
        and all(number(row.get(k), 100) for k in ("error", "best_error", "top5_error", "ema_error"))
        and all(number(row.get(k)) for k in ("seconds", "params", "flops"))
    )


def run_row(run: str, run_dir: Path, cfg: C.RunConfig) -> dict:
    """The row of one run directory from its result.json and metrics.jsonl (status may be None:
    no result yet; the caller decides running/pending/failed)."""
    result_path = run_dir / rundir.RESULT
    result = rundir.read_result(run_dir)
    reason = None
    if result is None and result_path.exists():
        warnings.warn(f"{run_dir}: unreadable result.json; reported as failed", stacklevel=3)
        result, reason = {"status": "failed"}, "unreadable result.json"
    result = result or {}
    metrics = rundir.read_metrics(run_dir)
    status = result.get("status")
    done = rundir.is_complete(run_dir)
    last = metrics[-1] if metrics else {}
    fields = _config_fields(cfg)
    row = {
        "run": run,
        "run_dir": str(run_dir),
        "status": status,
        "reason": result.get("reason") or reason,
        **{k: v for k, v in fields.items() if not k.startswith("cfg.")},
        "error": _nan(result.get("top1_err")) if done else math.nan,
        "best_error": _nan(result.get("best_top1_err")) if done else math.nan,
        "top5_error": _nan(result.get("top5_err")) if done else math.nan,
        "ema_error": _nan(result.get("ema_top1_err")) if done else math.nan,
        "diverged": status == "diverged",
        "epochs_done": len(metrics),
        "seconds": _nan(result.get("seconds", last.get("elapsed"))),
        "params": _nan(result.get("params")),
        "flops": _nan(result.get("flops")),
        "_started": bool(metrics) or (run_dir / rundir.CHECKPOINT).exists() or (run_dir / rundir.LOG).exists(),
    }
    row.update({k: v for k, v in fields.items() if k.startswith("cfg.")})
    return row


def _load_cache(folder: Path) -> dict:
    """{run: (key, row)} from the JSON cache; anything not shaped like a cached row is ignored."""
    try:
        cache = json.loads(rundir.read_capped(folder / CACHE, CACHE_BYTES))
    except (OSError, ValueError):  # ValueError: not JSON, or over CACHE_BYTES (ignored, rebuilt)
        return {}
    rows = cache.get("rows") if isinstance(cache, dict) and cache.get("version") == CACHE_VERSION else None
    if not isinstance(rows, dict):
        return {}
    fields = set(COLUMNS) - {"run_dir", "state"} | {"_started"}  # state is read fresh, never cached
    out = {}
    for run, entry in rows.items():
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), list)
            and isinstance(entry.get("row"), dict)
            and fields <= set(entry["row"])
        ):
            out[run] = (tuple(tuple(k) if isinstance(k, list) else k for k in entry["key"]), entry["row"])
    return out


def _save_cache(folder: Path, rows: dict) -> None:
    """Write {run: (key, row)} as JSON; run_dir is left out (it follows the folder when it moves)."""
    data = {
        run: {"key": key, "row": {k: v for k, v in row.items() if k != "run_dir"}} for run, (key, row) in rows.items()
    }
    try:
        rundir.write_atomic(folder / CACHE, json.dumps({"version": CACHE_VERSION, "rows": data}).encode())
    except (OSError, TypeError, ValueError):
        pass


def _runs_of(folder: Path) -> tuple[list[tuple[str, Path, C.RunConfig | None, list[str]]], bool]:
    """[(run id, run dir, config or None when unreadable, sampled keys)], and whether it is a sweep."""
    table = rundir.read_json(folder / rundir.RUN_TABLE)
    if table is not None:
        try:
            from analysis.sweeps.folder import valid_run_id

            rows = []
            for r in table["runs"]:  # an id or folder outside runs/ is refused (the table is a folder's data)
                run = valid_run_id(r["run"], folder)
                if r.get("run_dir", f"{rundir.RUNS}/{run}") != f"{rundir.RUNS}/{run}":
                    raise ConfigError(f"{folder / rundir.RUN_TABLE}: run {run} names the folder {shown(r['run_dir'])}")
                cfg = C.RunConfig().replace(r["overrides"])
                rows.append((run, folder / rundir.RUNS / run, cfg, list(r.get("sampled", []))))
            return rows, True
        except (KeyError, TypeError, AttributeError):
            raise ConfigError(f"{folder / 'runs.json'} is not a run table (written by Sweep.from_dict)") from None
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (d / rundir.CONFIG).is_file():
            continue
        try:
            cfg = C.load(d / rundir.CONFIG)
        except (ValueError, yaml.YAMLError) as e:
            warnings.warn(f"{d}: unreadable config.yaml ({str(e).splitlines()[0]}); skipped", stacklevel=3)
            continue
        out.append((d.name, d, cfg, []))
    return out, False


def result_status(state: str, started: bool) -> tuple[str, str | None]:
    """(status, reason) of a run without a result, in the results table's words, from its run state
    (analysis.rundir.reader): an ended, unfinished run is "failed"; an active or unlaunched one is
    "running" when it wrote files and its state allows it, else "pending"; "completed" without a
    result (it finished between reading its folder and asking the scheduler) reads "running"."""
    if state in ("running", "unknown", "completed"):
        return ("running" if started or state == "completed" else "pending"), None
    if state in ("pending", "not_launched", "diverged"):
        return "pending", None
    return "failed", f"job {state}"


def collect(folder: str | Path, scheduler: bool = True, cache: bool = True) -> pd.DataFrame:
    """Return the results table of a sweep folder (or a folder whose subfolders are run dirs).

    scheduler: for a sweep, ask the scheduler about runs without a final result (one sacct call) so
    that cancelled/killed runs read "failed"; otherwise runs with files are "running", others
    "pending" (see result_status)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"not a folder: {folder}")
    runs, is_sweep = _runs_of(folder)
    cached = _load_cache(folder) if cache else {}
    fresh, rows, sampled_keys = {}, [], []
    for run, d, cfg, sampled in runs:
        if not d.is_dir():
            warnings.warn(f"{d}: run directory missing; skipped", stacklevel=2)
            continue
        key = tuple(rundir.file_key(d / f) for f in (rundir.CONFIG, rundir.RESULT, rundir.METRICS))
        hit = cached.get(run)
        if hit and hit[0] == key and _cached_row_ok(hit[1]):  # what the run's files gave, checked like them
            row = {**hit[1], **_config_fields(cfg), "run": run, "run_dir": str(d)}
        else:
            row = run_row(run, d, cfg)
        if row["reason"] != "unreadable result.json":  # re-read (and warn) until it is fixed
            fresh[run] = (key, row)
        row = dict(row)
        for k in sampled:
            if k not in sampled_keys:
                sampled_keys.append(k)
            row[k] = cfg.flat()[k]
        rows.append(row)
    if cache:
        _save_cache(folder, fresh)
    states = {}
    open_runs = [r["run"] for r in rows if r["status"] not in rundir.STATUSES[:2]]
    if is_sweep and scheduler and open_runs:  # their states: one scheduler read, no log tails
        from analysis.sweeps.status import read_records

        states = {run: record.state for run, record in read_records(folder, open_runs)[0].items()}
    for r in rows:
        started = r.pop("_started")
        final = r["status"] in rundir.STATUSES[:2]
        r["state"] = r["status"] if final else states.get(r["run"], "unknown")
        if r["status"] is None:
            r["status"], reason = result_status(r["state"], started)
            r["reason"] = r["reason"] or reason
    cfg_cols = [f"cfg.{k}" for k in C.RunConfig().flat()]
    frame = pd.DataFrame(rows, columns=COLUMNS + cfg_cols + sampled_keys)
    frame["diverged"] = frame["diverged"].astype(bool)
    return frame
