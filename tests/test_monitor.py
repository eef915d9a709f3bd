"""SweepMonitor and the incremental run-folder reader behind it.

Fast tests write run folders by hand, the way a trainer does (append a metrics line, write
result.json atomically), and refresh the monitor after each step. The slow ones drive the monitor
on real small sweeps trained by the local launcher: states and progress change across refreshes,
the same curve traces gain points, the EDF gains traces, the background refresh stops by itself,
and the cancel and resubmit buttons act on the right runs.
"""

from __future__ import annotations

import json
import time

import ipywidgets as widgets
import pytest

from analysis import rundir
from analysis.sweeps import Sweep
from analysis.rundir.reader import FINAL, KEEP
from analysis.sweeps.status import runs_state
from analysis.sweeps.watch import SweepWatcher
from analysis.widgets import SweepMonitor
from analysis.widgets.monitor import runs_table_html
from analysis.widgets.refresher import Changes, Refresher
from tests.test_widgets import shown_figure

GRID = {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"], "optim.name": ["adamw", "sgd"]}


def spec(name: str, epochs: int = 3, per_class: int = 30, **extra) -> dict:
    return {
        "name": name,
        "grid": GRID,
        "samples": 1,
        "base": {
            "data": {"train_per_class": per_class, "test_per_class": 10},
            "train": {
                "epochs": epochs,
                "batch_size": 50,
                "precision": "fp32",
                "progress": "lines",
                "threads": 1,
                "checkpoint_minutes": 0,
            },
        },
        **extra,
    }


def epoch_row(epoch: int, err: float = 50.0) -> dict:
    return {
        "epoch": epoch,
        "step": 6 * epoch,
        "train_loss": 2.0 / epoch,
        "test_top1_err": err,
        "test_top5_err": err / 5,
        "ema_top1_err": None,
        "ema_top5_err": None,
        "lr": 1e-3,
        "seconds": 1.0,
        "images_per_s": 300.0,
        "elapsed": 1.5 * epoch,
    }


def finish(run_dir, status: str = "completed", err: float = 40.0) -> None:
    rundir.write_json(
        run_dir / rundir.RESULT,
        {
            "status": status,
            "top1_err": err,
            "best_top1_err": err,
            "top5_err": err / 5,
            "reason": None,
            "epoch": 3,
            "step": 18,
        },
    )


@pytest.fixture
def hand_sweep(tmp_path):
    """A sweep folder of four 3-epoch runs, none launched: the tests write their files."""
    return Sweep.from_dict(spec("by_hand"), root=tmp_path)


# ---------------------------------------------------------------- reading run folders


def test_metrics_are_read_incrementally(hand_sweep):
    watcher = SweepWatcher(hand_sweep)
    run = hand_sweep.run_ids[0]
    d = hand_sweep.run_dir(run)
    assert watcher.refresh() == set() and watcher.runs[run].epoch == 0
    rundir.append_metrics(d, epoch_row(1))
    assert watcher.refresh() == {run}
    w = watcher.runs[run]
    assert w.epoch == 1 and w.steps_per_epoch == 6 and w._offset == (d / rundir.METRICS).stat().st_size
    assert watcher.refresh() == set()  # nothing changed: nothing read
    with open(d / rundir.METRICS, "a") as f:  # a line still being written is left for later
        f.write(json.dumps(epoch_row(2))[:20])
    watcher.refresh()
    assert w.epoch == 1
    with open(d / rundir.METRICS, "a") as f:
        f.write(json.dumps(epoch_row(2))[20:] + "\n")
    assert watcher.refresh() == {run} and [r["epoch"] for r in w.rows] == [1, 2]
    rundir.truncate_metrics(d, 1)  # a resume from an older checkpoint replaces the file
    watcher.refresh()
    assert [r["epoch"] for r in w.rows] == [1]


def test_final_runs_are_not_read_again_and_counts(hand_sweep):
    watcher = SweepWatcher(hand_sweep)
    a, b = hand_sweep.run_ids[:2]
    for e in (1, 2, 3):
        rundir.append_metrics(hand_sweep.run_dir(a), epoch_row(e))
    finish(hand_sweep.run_dir(a))
    finish(hand_sweep.run_dir(b), "diverged", 100.0)
    assert watcher.refresh() == {a, b}
    counts = watcher.counts()
    assert counts["completed"] == 1 and counts["diverged"] == 1 and counts["not_launched"] == 2
    # status() says the same: diverged is a state of its own, final like completed (resubmit keeps it)
    states = {r["run"]: r["state"] for r in runs_state(hand_sweep.dir, [a, b])}
    assert states == {a: "completed", b: "diverged"} and "diverged" in FINAL and set(FINAL) <= set(KEEP)
    assert not watcher.active() and watcher.epochs_done() == (6, 12)
    (hand_sweep.run_dir(a) / rundir.METRICS).unlink()  # a final run is never looked at again
    assert watcher.refresh() == set() and watcher.runs[a].epoch == 3
    frame = watcher.frame()
    assert list(frame["run"]) == [a, b] and list(frame["error"]) == [40.0, 100.0]
    assert list(frame["diverged"]) == [False, True] and frame["model"].iloc[0] == "ViT_P-fmnist_tiny"


def test_progress_estimates_the_running_epoch(hand_sweep):
    watcher = SweepWatcher(hand_sweep)
    run = hand_sweep.run_ids[0]
    for e in (1, 2):
        rundir.append_metrics(hand_sweep.run_dir(run), epoch_row(e))
    watcher.refresh()
    w = watcher.runs[run]
    assert w.progress() == (2 / 3, 2 / 3)  # not running: no estimate
    w.state = "running"
    done, est = w.progress(now=w.metrics_mtime + 0.75)  # half of the last epoch's 1.5 s
    assert done == pytest.approx(2 / 3) and est == pytest.approx(2.5 / 3)
    assert "step ~15/18" in runs_table_html(watcher, now=w.metrics_mtime + 0.75)


def test_tables_keep_what_a_folder_says_as_text(hand_sweep):
    """A failure reason is a folder's data: the monitor's runs table and the status table escape it."""
    a = hand_sweep.run_ids[0]
    rundir.write_json(hand_sweep.run_dir(a) / rundir.RESULT, {"status": "failed", "reason": "<img src=x onerror=1>"})
    watcher = SweepWatcher(hand_sweep)
    watcher.refresh()
    for page in (runs_table_html(watcher, "all"), hand_sweep.status()._repr_html_()):
        assert "&lt;img src=x onerror=1&gt;" in page and "<img" not in page
    assert f'<tr style="background:#ffffff"><td>{hand_sweep.run_ids[1]}</td><td>not_launched</td>' in runs_table_html(
        watcher, "all"
    )


# ---------------------------------------------------------------- the background refresh


def test_refresher_says_what_changed(hand_sweep):
    seen = []
    refresher = Refresher(SweepWatcher(hand_sweep), hand_sweep.dir, 1.0, seen.append, lambda: None, print)
    a = hand_sweep.run_ids[0]
    assert refresher.refresh() == set() and seen[-1] == Changes(set(), False)
    rundir.append_metrics(hand_sweep.run_dir(a), epoch_row(1))
    assert refresher.refresh() == {a} and seen[-1] == Changes({a}, False)
    finish(hand_sweep.run_dir(a))
    refresher.refresh()
    assert seen[-1] == Changes({a}, True)  # a result appeared: the EDF and claims redraw
    refresher.refresh()
    assert seen[-1] == Changes(set(), False) and refresher.refreshes == 4


def test_refresher_thread_ends_with_the_sweep_and_one_runs_per_folder(hand_sweep):
    states = []
    ended = Refresher(SweepWatcher(hand_sweep), hand_sweep.dir, 0.01, lambda c: None, lambda: states.append(1), print)
    ended.start()  # nothing is pending or running: the thread stops after its first refresh
    assert ended.join(5) and ended.ended.startswith("the sweep has ended") and len(states) == 2
    watcher = SweepWatcher(hand_sweep)
    watcher.active = lambda: True  # a sweep that keeps running
    first, second = (Refresher(watcher, hand_sweep.dir, 0.01, lambda c: None, lambda: None, print) for _ in "ab")
    first.start()
    assert first.running and first.live
    second.start()  # the same folder: the first one stops
    assert first.join(5) and first.ended == "stopped" and second.running
    second.stop()
    assert not second.running and second.ended == "stopped"


# ---------------------------------------------------------------- the widget, refreshed by hand


def test_monitor_curves_grow_in_place_and_edf_gains_traces(hand_sweep):
    m = SweepMonitor(hand_sweep, start=False, curves=2)
    assert not m.running and "not launched" in m.counts.header.value
    assert len(m.curves.fig.data) == 0 and shown_figure(m.curves.view)["data"] == []
    assert m.results.edf_fig.layout.annotations[0].text.startswith("no finished runs yet")
    assert shown_figure(m.results.edf_view)["layout"]["annotations"][0]["text"].startswith("no finished runs yet")
    assert m.curves.view in m.widget.children and m.results.edf_view in m.widget.children
    a, b, c, _ = hand_sweep.run_ids
    rundir.append_metrics(hand_sweep.run_dir(a), epoch_row(1))
    m.refresh()
    assert m.curves.select.value == (a,)  # the curves follow runs that start, until the user picks
    loss, err = m.curves.fig.data
    assert list(loss.y) == [2.0] and list(err.y) == [50.0]
    rundir.append_metrics(hand_sweep.run_dir(a), epoch_row(2, 45.0))
    m.refresh()
    assert m.curves.fig.data[0] is loss and list(loss.x) == [1, 2] and list(err.y) == [50.0, 45.0]
    shown = shown_figure(m.curves.view)["data"]  # what the page draws: the new points, in a new output
    assert [t["x"] for t in shown] == [[1, 2], [1, 2]] and shown[1]["y"] == [50.0, 45.0]
    assert "epochs 2/12" in m.counts.header.value

    finish(hand_sweep.run_dir(a))
    m.refresh()
    assert len([t for t in m.results.edf_fig.data if t.meta["kind"] == "edf"]) == 1
    finish(hand_sweep.run_dir(b), err=42.0)
    finish(hand_sweep.run_dir(c), err=30.0)
    m.refresh()
    groups = {t.meta["group"] for t in m.results.edf_fig.data if t.meta["kind"] == "edf"}
    assert len([t for t in shown_figure(m.results.edf_view)["data"] if t["meta"]["kind"] == "edf"]) == 3
    assert groups == {"ViT_P-fmnist_tiny adamw", "ViT_P-fmnist_tiny sgd", "ViT_C-fmnist_tiny adamw"}
    assert "ViT_C-fmnist_tiny sgd 0/1" in m.results.claims.value  # the claims wait for the last group
    finish(hand_sweep.run_dir(hand_sweep.run_ids[3]), err=31.0)
    m.refresh()
    assert "<table class=claims" in m.results.claims.value

    m.curves.select.value = (b, a)  # the user's pick: the traces follow it, a's keep their objects
    assert [t.meta["group"] for t in m.curves.fig.data] == [b, b, a, a]
    assert m.curves.fig.data[2] is loss
    rundir.append_metrics(hand_sweep.run_dir(hand_sweep.run_ids[3]), epoch_row(1))
    m.refresh()
    assert m.curves.select.value == (b, a)  # no longer follows


def test_monitor_elapsed_time_counts_from_the_first_launch(hand_sweep):
    from datetime import datetime, timedelta

    now = datetime.now()
    launches = [
        rundir.launch_record(i, "local", [], f"code/launch-{i:03d}", "submitit", {}, when=(now - ago).isoformat())
        for i, ago in enumerate((timedelta(hours=2), timedelta(minutes=1)))
    ]
    rundir.write_json(hand_sweep.dir / "launches.json", {"launches": launches})
    m = SweepMonitor(hand_sweep, start=False)
    assert "elapsed 2h 00m since" in m.counts.header.value  # a resubmission keeps the sweep's whole time
    assert f"(resubmitted {now - timedelta(minutes=1):%H:%M:%S})" in m.counts.header.value


def test_monitor_lists_logs_and_confirms(hand_sweep):
    m = SweepMonitor(hand_sweep, start=False, max_rows=2)
    a = hand_sweep.run_ids[0]
    rundir.log_line(hand_sweep.run_dir(a), "epoch 1/3 loss 2.0")
    m.curves.select.value = (a,)
    m.actions.logs_button.value = True
    assert "epoch 1/3 loss 2.0" in m.actions.logs.value
    assert "and 2 more" in m.runs_table.table.value
    m.runs_table.listing.value = "running"
    assert "no run is running" in m.runs_table.table.value
    m.actions.cancel_button.click()
    assert "none of the selected runs is pending or running" in m.actions.message.value
    assert m.actions.confirm_box.layout.display == "none"
    m.actions.resubmit_button.click()  # four never-launched runs: asks first
    assert (
        "resubmit 4 run(s) (4 not_launched)?" in m.actions.message.value
        and m.actions.confirm_box.layout.display is None
    )
    m.actions.back_button.click()
    assert m.actions.message.value.endswith("></span>") and m.actions.pending is None
    assert m._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"] == m.model_id
    assert m.children == (m.widget,) and widgets.VBox([m]).children[0] is m  # composes like any widget


# ---------------------------------------------------------------- real sweeps


@pytest.mark.slow
def test_monitor_follows_a_real_sweep_in_the_background(tmp_path):
    sweep = Sweep.from_dict(spec("live", epochs=3, launch={"cluster": "local", "parallel": 2}), root=tmp_path)
    sweep.launch()
    m = sweep.monitor(interval=0.3, curves=4)
    assert m.running
    seen, epochs, edf_traces, first = set(), [], [], {}
    deadline = time.monotonic() + 600
    while m.running and time.monotonic() < deadline:
        with m.refresher.lock:
            seen |= {w.state for w in m.watcher.runs.values()}
            epochs.append(m.watcher.epochs_done()[0])
            edf_traces.append(len([t for t in m.results.edf_fig.data if t.meta and t.meta["kind"] == "edf"]))
            for t in m.curves.fig.data:
                first.setdefault((t.meta["group"], t.meta["kind"]), (t, len(t.x)))
        time.sleep(0.1)
    assert m.join(5), "the background refresh did not stop when the sweep ended"
    assert "the sweep has ended" in m.counts.header.value and m.refresher.last_error is None
    assert {"running", "completed"} <= seen and m.watcher.counts()["completed"] == 4
    assert epochs == sorted(epochs) and epochs[0] < epochs[-1] == 12
    assert edf_traces[0] == 0 and edf_traces[-1] == 4 and len(set(edf_traces)) > 2  # traces came one by one
    grown = [(t, n) for t, n in first.values() if t in m.curves.fig.data and len(t.x) > n]
    assert grown, "no curve trace gained points in place"
    assert all(len(t.x) == 3 for t in m.curves.fig.data)
    assert "<table class=claims" in m.results.claims.value


@pytest.mark.slow
def test_monitor_cancels_and_resubmits_the_right_runs(tmp_path):
    long = spec("cancel", epochs=30, per_class=100, launch={"cluster": "local", "parallel": 4})
    long["grid"] = {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"]}
    sweep = Sweep.from_dict(long, root=tmp_path)
    sweep.launch()
    a, b = sweep.run_ids
    m = sweep.monitor(interval=0.5)
    try:
        m.curves.select.value = (a,)
        m.actions.cancel_button.click()
        assert f"cancel 1 run(s), job(s) {m.watcher.runs[a].job_id}?" in m.actions.message.value
        m.actions.confirm_button.click()
        assert "cancelled job(s)" in m.actions.message.value
        deadline = time.monotonic() + 120
        while m.watcher.runs[a].state != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert m.watcher.runs[a].state == "cancelled" and m.watcher.runs[b].state in ("pending", "running")
        m.actions.resubmit_button.click()
        assert "resubmit 1 run(s) (1 cancelled)?" in m.actions.message.value
        m.actions.confirm_button.click()
        assert "resubmitted as job(s)" in m.actions.message.value
        assert sweep.launches[-1]["jobs"][0]["runs"] == [a] and len(sweep.launches) == 2
        assert m.watcher.runs[a].state in ("pending", "running") and m.running
    finally:
        sweep.cancel()
        assert m.join(120)
    assert {w.state for w in m.watcher.runs.values()} <= {"cancelled", "completed"}
