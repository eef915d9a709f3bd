"""One SweepMonitor refresh on a synthetic 1,000-run sweep folder, against `Sweep.status()` (which
reads every run folder in full) measured side by side.

The folder is a real sweep folder (spec, run table, one config.yaml per run) whose run files are
written as trainers write them: 40% completed (10 epochs and a result), 5% diverged, 5% failed, 20%
running (some epochs, job.json), 30% pending. Its launch record names this process as every job,
so the scheduler reports them running. Timed: the monitor's first refresh (everything read), a
refresh with nothing changed, a refresh after 200 running runs each wrote an epoch and 20 of them
ended, and the same three for the watcher alone (no widgets); the reference is `sweep.status()`.
The first monitor refresh includes building the widget (the run table, the planned groups) and
reading every result once; one-time imports are done before timing.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from analysis import rundir
from analysis.sweeps import Sweep

EPOCHS = 10


def metrics_row(epoch: int, err: float) -> dict:
    return {
        "epoch": epoch,
        "step": 100 * epoch,
        "train_loss": 2.0 / epoch,
        "test_top1_err": err,
        "test_top5_err": err / 5,
        "ema_top1_err": None,
        "ema_top5_err": None,
        "lr": 1e-3,
        "seconds": 5.0,
        "images_per_s": 2000.0,
        "elapsed": 6.0 * epoch,
    }


def write_epochs(d: Path, first: int, last: int) -> None:
    with open(d / rundir.METRICS, "a") as f:
        for e in range(first, last + 1):
            f.write(json.dumps(metrics_row(e, 30 + 40 / e)) + "\n")


def make_sweep(root: Path, runs: int = 1000) -> tuple[Sweep, list[str]]:
    """The synthetic sweep folder; returns the sweep and the ids of its running runs."""
    spec = {
        "name": "bench_monitor",
        "samples": runs // 4,
        "seed": 0,
        "base": {"train": {"epochs": EPOCHS}},
        "grid": {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"], "optim.name": ["adamw", "sgd"]},
        "sample": {"optim.lr": {"log_uniform": [1e-4, 1e-2]}, "optim.weight_decay": {"log_uniform": [1e-3, 1.0]}},
    }
    sweep = Sweep.from_dict(spec, root=root)
    job = str(os.getpid())
    running = []
    for i, run in enumerate(sweep.run_ids):
        d, kind = sweep.run_dir(run), i % 20
        if kind < 8 or kind in (8, 9):  # completed, diverged
            write_epochs(d, 1, EPOCHS if kind < 8 else 3)
            result = (
                {"status": "completed", "top1_err": 30 + i % 7, "best_top1_err": 30 + i % 7}
                if kind < 8
                else {"status": "diverged", "top1_err": 100.0, "best_top1_err": 100.0, "reason": "non-finite loss"}
            )
            rundir.write_json(d / rundir.RESULT, result)
        elif kind == 10:  # failed
            write_epochs(d, 1, 2)
            rundir.write_json(d / rundir.RESULT, {"status": "failed", "reason": "RuntimeError: out of memory"})
        elif kind < 15:  # running
            write_epochs(d, 1, 1 + i % 5)
            running.append(run)
        if kind < 15:
            rundir.write_json(
                d / rundir.JOB, {"job_id": job, "host": "bench", "pid": os.getpid(), "started": time.time()}
            )
    jobs = [{"job_id": job, "runs": sweep.run_ids[k::10]} for k in range(10)]
    rundir.write_json(
        sweep.dir / "launches.json",
        {
            "launches": [
                {
                    "launch": 0,
                    "time": datetime.now().isoformat(timespec="seconds"),
                    "cluster": "local",
                    "code": "code",
                    "options": {},
                    "jobs": jobs,
                    "cancelled": [],
                }
            ]
        },
    )
    return sweep, running


def advance(sweep: Sweep, running: list[str], step: int) -> None:
    """Every running run writes one more epoch; 20 of them end with a result."""
    for k, run in enumerate(running):
        d = sweep.run_dir(run)
        if rundir.read_result(d):
            continue
        epochs = len(rundir.read_metrics(d))
        if epochs < EPOCHS:
            write_epochs(d, epochs + 1, epochs + 1)
        if k % 10 == step % 10:
            rundir.write_json(d / rundir.RESULT, {"status": "completed", "top1_err": 33.0, "best_top1_err": 33.0})


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool = False, runs: int = 1000) -> dict:
    import plotly.graph_objects as go

    from analysis.claims import claims_table  # noqa: F401 (imported before timing, as in a session)
    from analysis.sweeps.watch import SweepWatcher
    from analysis.widgets import SweepMonitor

    go.FigureWidget()  # its first use imports the widget machinery (seconds): not part of a refresh
    repeats = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        t0 = time.perf_counter()
        sweep, running = make_sweep(Path(tmp), runs)
        setup_s = time.perf_counter() - t0
        out = {"runs": len(sweep.run_ids), "running": len(running), "setup_seconds": setup_s}
        first = timed(lambda: SweepMonitor(sweep, start=False))
        monitor = SweepMonitor(sweep, start=False)
        watcher = SweepWatcher(sweep)
        watcher_first = timed(watcher.refresh)
        idle, watcher_idle, changed, watcher_changed, status = [], [], [], [], []
        for i in range(repeats):
            idle.append(timed(monitor.refresh))
            watcher_idle.append(timed(watcher.refresh))
            status.append(timed(sweep.status))
            advance(sweep, running, i)
            changed.append(timed(monitor.refresh))
            watcher_changed.append(timed(watcher.refresh))
        med = statistics.median
        out.update(
            {
                "monitor_first_refresh_s": first,
                "monitor_idle_refresh_s": med(idle),
                "monitor_refresh_after_changes_s": med(changed),
                "watcher_first_refresh_s": watcher_first,
                "watcher_idle_refresh_s": med(watcher_idle),
                "watcher_refresh_after_changes_s": med(watcher_changed),
                "reference_status_s": med(status),
                "status_over_monitor_idle": med(status) / med(idle),
                "status_over_monitor_after_changes": med(status) / med(changed),
                "times": {"idle": idle, "changed": changed, "status": status},
                "notes": "medians over repeats; each 'changed' refresh follows 200 new epochs and 20 new results; "
                "the monitor includes the widgets (table, header, curves of the followed runs, EDF, claims)",
            }
        )
    return out
