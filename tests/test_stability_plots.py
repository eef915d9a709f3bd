"""Stability figures and tables on the fixture sweep and on small hand-made frames."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from tests.fixtures_sweep import sweep, sweep_frame  # noqa: F401  (pytest fixtures)

from analysis.claims import claims_table
from analysis.errors import ConfigError
from analysis.plots import (
    bootstrap_best,
    curves_figure,
    edf,
    edf_figure,
    epochs_figure,
    epochs_table,
    optimizer_gap_figure,
    optimizer_gap_table,
    read_metrics,
    sensitivity_figure,
    summary_table,
)

LABEL = re.compile(r"^(?P<group>.+?)  n=(?P<n>\d+) min=(?P<min>[\d.]+) mean=(?P<mean>[\d.]+)(?: div=(?P<div>\d+))?$")


def traces(fig, kind):
    """Return the traces whose meta kind is `kind`."""
    return [t for t in fig.data if t.meta and t.meta["kind"] == kind]


def counted(df):
    """Errors that count, diverged at 100, computed independently of the package."""
    err = df["error"].where(~df["diverged"], 100.0)
    return err.dropna()


# ---------------------------------------------------------------- EDF


def test_edf_steps_are_fractions_below():
    e = np.random.default_rng(1).uniform(5, 30, size=37)
    x, y = edf(e)
    assert np.all(np.diff(x) >= 0)
    for xi, yi in zip(x, y):
        assert yi == pytest.approx(np.mean(e <= xi))  # F just to the right of xi
        assert yi - 1 / e.size == pytest.approx(np.mean(e < xi))  # F(xi) itself


def test_edf_figure_matches_groups(sweep):
    fig = edf_figure(sweep)
    lines = traces(fig, "edf")
    keys = sweep.groupby(["model", "optimizer"]).groups
    assert len(lines) == len(keys) == 4
    total = 0
    for line in lines:
        m = LABEL.match(line.name)
        assert m, line.name
        model, optimizer = m["group"].split(" ")
        err = counted(sweep[(sweep.model == model) & (sweep.optimizer == optimizer)])
        n = len(err)
        total += n
        assert int(m["n"]) == n
        assert float(m["min"]) == pytest.approx(err.min(), abs=0.05)
        assert float(m["mean"]) == pytest.approx(err.mean(), abs=0.05)
        # the step points: a leading 0, then k/n at the sorted errors
        assert list(line.y) == pytest.approx([0.0, *np.arange(1, n + 1) / n])
        assert list(line.x[1:]) == pytest.approx(sorted(err))
        assert line.line.shape == "hv"
    assert total == sweep["error"].notna().sum()  # failed/unfinished runs are left out


def test_edf_counts_diverged_at_100_and_marks_them(sweep):
    fig = edf_figure(sweep)
    n_div = sweep.groupby(["model", "optimizer"])["diverged"].sum()
    assert n_div.sum() > 0
    for line, mark in zip(traces(fig, "edf"), traces(fig, "diverged")):
        model, optimizer = line.meta["group"].split(" ")
        k = int(n_div[(model, optimizer)])
        assert mark.meta["count"] == k
        assert int(np.sum(np.asarray(line.x[1:]) == 100.0)) == k
        div = LABEL.match(line.name)["div"]
        if k:
            n = len(line.x) - 1
            assert int(div) == k
            assert list(mark.x) == [fig.layout.xaxis.range[1]]
            assert mark.y[0] == pytest.approx(1 - k / n)
        else:
            assert div is None and len(mark.x) == 0
    # the default x range stops short of the pile-up at 100
    finite = counted(sweep[~sweep.diverged])
    assert finite.max() < fig.layout.xaxis.range[1] < 100


def test_edf_relative_shifts_each_best_to_zero(sweep):
    absolute = traces(edf_figure(sweep), "edf")
    relative = traces(edf_figure(sweep, relative=True), "edf")
    for a, r in zip(absolute, relative):
        assert min(r.x) == 0.0
        assert np.asarray(r.x) == pytest.approx(np.asarray(a.x) - min(a.x))
        assert r.name == a.name  # the legend keeps the absolute numbers


def test_edf_x_range_and_any_grouping(sweep):
    fig = edf_figure(sweep, by="stem", x_range=(5, 20))
    assert list(fig.layout.xaxis.range) == [5, 20]
    assert {t.meta["group"] for t in traces(fig, "edf")} == {"conv", "patchify"}
    mark = [t for t in traces(fig, "diverged") if t.meta["count"]]
    assert mark and mark[0].x[0] == 20
    fig = edf_figure(sweep, by=["stem", "optimizer", "epochs"])
    finished = sweep.loc[~sweep["diverged"], "error"].dropna()
    lo, hi = fig.layout.xaxis.range  # by default a margin either side: no step sits on an axis
    assert lo < finished.min() and finished.max() < hi < 100
    assert len(traces(fig, "edf")) == sweep.dropna(subset=["error"]).groupby(["stem", "optimizer", "epochs"]).ngroups


def test_bootstrap_percentiles():
    e = np.arange(1.0, 21.0)
    lo, med, hi = bootstrap_best(e)
    assert 1.0 <= lo <= med <= hi <= 20.0
    assert med < np.median(e)  # best of 5 draws is well below the median run
    # with all runs drawn, the best run is in most resamples, so the 2.5% point is the min
    assert bootstrap_best(e, subsample=1.0)[0] == 1.0
    assert list(bootstrap_best([7.0] * 9)) == [7.0, 7.0, 7.0]
    assert list(bootstrap_best(e[::-1])) == list(bootstrap_best(e))  # exact: no sampling, order-free
    with pytest.raises(ConfigError, match="subsample"):
        bootstrap_best(e, subsample=0)


@pytest.mark.parametrize("style", ["band", "errorbar"])
def test_edf_bootstrap_traces(sweep, style):
    fig = edf_figure(sweep, bootstrap=style)
    boots = traces(fig, "bootstrap")
    assert len(boots) == len(traces(fig, "edf"))
    for line, boot in zip(traces(fig, "edf"), boots):
        lo, med, hi = boot.meta["percentiles"]
        assert lo <= med <= hi
        assert min(line.x) <= lo
        if style == "band":
            xs = [v for v in boot.x if v is not None]
            assert min(xs) == pytest.approx(lo) and max(xs) == pytest.approx(hi)
        else:
            assert boot.x[0] == pytest.approx(med)
            assert boot.error_x.array[0] == pytest.approx(hi - med)
            assert boot.error_x.arrayminus[0] == pytest.approx(med - lo)
            assert boot.y[0] < 0  # drawn below the EDF
    # relative: the bootstrap is taken over relative errors
    rel = traces(edf_figure(sweep, relative=True, bootstrap=style), "bootstrap")
    assert all(b.meta["percentiles"][0] >= 0 for b in rel)


def test_bad_input_is_one_line_config_error(sweep):
    with pytest.raises(ConfigError, match=r"missing column 'nope'.*columns: run, run_dir") as info:
        edf_figure(sweep, by=["model", "nope"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="empty"):
        edf_figure(sweep.iloc[:0])
    with pytest.raises(ConfigError, match="bootstrap style"):
        edf_figure(sweep, bootstrap="shade")
    with pytest.raises(ConfigError, match="no run .* has an error"):
        edf_figure(sweep[sweep.error.isna() & ~sweep.diverged])
    for builder in (epochs_figure, summary_table, sensitivity_figure):
        with pytest.raises(ConfigError, match="missing column 'error'"):
            builder(sweep.drop(columns=["error"]))
    with pytest.raises(ConfigError, match="unknown stat 'worst'"):
        epochs_figure(sweep, stat="worst")


# ---------------------------------------------------------------- schedule length and optimizer gap


@pytest.mark.parametrize("stat", ["best", "median"])
def test_epochs_figure_values(sweep, stat):
    fig = epochs_figure(sweep, stat=stat)
    assert fig.layout.xaxis.type == "log"
    expected = (
        sweep.assign(err=sweep["error"].where(~sweep.diverged, 100.0))
        .dropna(subset=["err"])
        .groupby(["model", "optimizer", "epochs"])["err"]
        .agg("min" if stat == "best" else "median")
    )
    lines = traces(fig, "epochs")
    assert len(lines) == 4
    for line in lines:
        model, optimizer = line.meta["group"].split(" ")
        assert list(line.x) == [10, 20, 40]
        assert list(line.y) == pytest.approx([expected[(model, optimizer, e)] for e in line.x])


def test_optimizer_gap(sweep):
    keys = [sweep.model, sweep.optimizer, sweep.epochs]
    best = counted(sweep).groupby(keys).min()
    for row in optimizer_gap_table(sweep, stat="best").itertuples():
        assert row.gap == pytest.approx(best[(row.model, "sgd", row.epochs)] - best[(row.model, "adamw", row.epochs)])
    # the default: the median gap, with the claims table's bootstrap interval (same resamples)
    table = optimizer_gap_table(sweep)
    median = counted(sweep).groupby(keys).median()
    for row in table.itertuples():
        assert row.gap == pytest.approx(
            median[(row.model, "sgd", row.epochs)] - median[(row.model, "adamw", row.epochs)]
        )
        if row.epochs == 20:  # 16 sampled + 2 tuned runs per group
            assert row.low <= row.gap <= row.high and row.n_sgd >= 17
        else:  # two tuned runs: no interval
            assert np.isnan(row.low) and np.isnan(row.high) and row.n_sgd == 2
    claims = claims_table(sweep).query("claim == 'optimizer_gap' and setting == 'fmnist, 20 epochs'")
    at20 = table[table.epochs == 20].set_index("model")
    for row in claims.itertuples():
        assert [row.estimate, row.low, row.high] == pytest.approx(
            at20.loc[row.subject, ["gap", "low", "high"]].tolist()
        )
    # the fixture's patchify stem pays more for SGD than the conv stem
    by_model = table.groupby("model")["gap"].mean()
    assert by_model["ViT_P-fmnist"] > by_model["ViT_C-fmnist"]

    lines = optimizer_gap_figure(sweep)
    assert [t.type for t in lines.data] == ["scatter", "scatter"]
    assert all(t.error_y.array is not None for t in lines.data)
    bars = optimizer_gap_figure(sweep[sweep.epochs == 20])
    bar = bars.data[0]
    assert bar.type == "bar" and "median" in bars.layout.yaxis.title.text
    assert list(bar.y) == pytest.approx([at20.loc[m, "gap"] for m in bar.x])
    assert list(bar.error_y.array) == pytest.approx([at20.loc[m, "high"] - at20.loc[m, "gap"] for m in bar.x])
    assert list(bar.error_y.arrayminus) == pytest.approx([at20.loc[m, "gap"] - at20.loc[m, "low"] for m in bar.x])
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; allowed: adamw, sgd"):
        optimizer_gap_table(sweep, a="lamb")
    with pytest.raises(ConfigError, match="unknown stat 'max'"):
        optimizer_gap_figure(sweep, stat="max")


# ---------------------------------------------------------------- lr / wd sensitivity


def test_sensitivity_panels_shared_scale_and_diverged(sweep):
    fig = sensitivity_figure(sweep)  # one panel per stem, one row per optimizer
    runs, div = traces(fig, "runs"), traces(fig, "diverged")
    assert len(runs) == len(div) == 4
    assert {t.marker.coloraxis for t in runs} == {"coloraxis"}
    finished = sweep[sweep.error.notna() & ~sweep.diverged]
    assert fig.layout.coloraxis.cmin == pytest.approx(finished.error.min())
    assert fig.layout.coloraxis.cmax == pytest.approx(finished.error.max())
    for r, d in zip(runs, div):
        stem, optimizer = r.meta["group"].split(" · ")
        cell = sweep[(sweep.stem == stem) & (sweep.optimizer == optimizer)]
        done = cell[cell.error.notna() & ~cell.diverged]
        assert sorted(r.marker.color) == pytest.approx(sorted(done.error))
        assert sorted(r.x) == pytest.approx(sorted(done.lr))
        assert sorted(d.x) == pytest.approx(sorted(cell[cell.diverged].lr))
        assert d.marker.symbol == "x"
    assert sum(len(d.x) for d in div) == sweep.diverged.sum()
    axes = [fig.layout[k] for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
    assert len(axes) == 8 and all(a.type == "log" for a in axes)


def test_sensitivity_relative_and_fixed_grid(sweep):
    fig = sensitivity_figure(sweep, panel="model", row=None, relative=True)
    runs = traces(fig, "runs")
    assert len(runs) == 2
    assert all(min(r.marker.color) == pytest.approx(0.0) for r in runs)
    # a fixed grid keeps empty cells, so a filtered frame has the same traces
    only = sweep[sweep.stem == "conv"]
    fixed = sensitivity_figure(only, panels=["conv", "patchify"], rows=["adamw", "sgd"])
    assert [t.meta["group"] for t in fixed.data] == [t.meta["group"] for t in sensitivity_figure(sweep).data]
    assert all(len(t.x) == 0 for t in fixed.data if t.meta["group"].startswith("patchify"))


# ---------------------------------------------------------------- summary table


def test_summary_table_numbers():
    nan = float("nan")
    df = pd.DataFrame(
        {
            "model": ["A"] * 6 + ["B"] * 2,
            "optimizer": ["sgd"] * 8,
            "status": [
                "completed",
                "completed",
                "completed",
                "diverged",
                "failed",
                "running",
                "completed",
                "completed",
            ],
            "error": [10.0, 12.0, 15.0, 100.0, nan, nan, 20.0, 21.0],
            "diverged": [False, False, False, True, False, False, False, False],
        }
    )
    table = summary_table(df).set_index("model")
    a, b = table.loc["A"], table.loc["B"]
    columns = ["n", "best", "median", "mean", "within_4", "diverged_frac", "failed", "unfinished"]
    assert list(table.columns) == ["optimizer", *columns]
    assert a[columns].tolist() == [4, 10.0, 13.5, 34.25, 0.5, 0.25, 1, 1]
    assert b[columns].tolist() == [2, 20.0, 20.5, 20.5, 1.0, 0.0, 0, 0]
    wide = summary_table(df, by="model", within=5.0).set_index("model")
    assert wide.loc["A", "within_5"] == 0.75
    # a group whose runs all failed is still listed
    only_failed = summary_table(df[df.status == "failed"], by="model")
    assert only_failed.loc[0, "n"] == 0 and only_failed.loc[0, "failed"] == 1


def test_summary_table_on_sweep(sweep):
    table = summary_table(sweep)
    assert table["n"].sum() == sweep.error.notna().sum()
    assert table["failed"].sum() == 1 and table["unfinished"].sum() == 2
    pp = table.set_index(["model", "optimizer"]).loc[("ViT_P-fmnist", "sgd")]
    assert pp.diverged_frac == pytest.approx(
        sweep[(sweep.model == "ViT_P-fmnist") & (sweep.optimizer == "sgd")].diverged.sum() / pp.n
    )


def test_epochs_table_skips_groups_without_errors(sweep):
    table = epochs_table(sweep)
    assert len(table) == 12 and table["n"].sum() == sweep.error.notna().sum()


# ---------------------------------------------------------------- training curves


def test_curves_read_run_directories(sweep):
    chosen = pd.concat([sweep[sweep.diverged].head(1), sweep[sweep.status == "completed"].head(2)])
    fig = curves_figure(chosen, metrics=["train_loss", "test_top1_err", "lr"], log_y=["lr"])
    assert len(fig.data) == 3 * 3
    for row in chosen.itertuples():
        records = [json.loads(line) for line in open(f"{row.run_dir}/metrics.jsonl")]
        for metric in ("train_loss", "test_top1_err", "lr"):
            (trace,) = [t for t in fig.data if t.meta == {"kind": metric, "group": row.run}]
            assert list(trace.x) == [r["epoch"] for r in records]
            want = [np.nan if r[metric] is None else r[metric] for r in records]
            assert np.allclose(trace.y, want, equal_nan=True)
    assert sum(t.showlegend for t in fig.data) == 3  # one legend entry per run
    assert fig.layout.yaxis3.type == "log"


def test_curves_partial_and_bad_runs(sweep, tmp_path):
    pending = sweep[sweep.status == "pending"]
    fig = curves_figure(pending)
    assert all(len(t.x) == 0 for t in fig.data)
    run = tmp_path / "torn"
    run.mkdir()
    good = json.dumps({"epoch": 1, "train_loss": 2.0, "lr": 0.1})
    (run / "metrics.jsonl").write_text(good + "\n" + '{"epoch": 2, "train_lo')
    frame = read_metrics(run)
    assert list(frame["epoch"]) == [1] and np.isnan(frame.loc[0, "test_top1_err"])
    assert [t.meta["group"] for t in curves_figure([run], labels=["mine"]).data][0] == "mine"
    (run / "metrics.jsonl").write_text('{"epoch": 1, "tr\n' + good + "\n" + good.replace("2.0", "1.5") + "\n")
    frame = read_metrics(run)  # the training engine's reader: torn lines skipped, the last row per epoch kept
    assert list(frame["epoch"]) == [1] and list(frame["train_loss"]) == [1.5]
    (run / "metrics.jsonl").write_text('{"epoch": 1, "tr\n' + good + "\n" + '{"epoch": 2, "lr": NaN}\n')
    assert list(read_metrics(run)["epoch"]) == [1]  # torn and invalid rows skipped
    with pytest.raises(ConfigError, match="does not exist"):
        curves_figure([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="unknown metric 'accuracy'"):
        curves_figure([run], metrics=["accuracy"])


# ---------------------------------------------------------------- a real collected sweep


@pytest.mark.slow
def test_every_builder_on_the_real_sweep(real_frame):
    df = real_frame
    n_counted = int((df.error.notna() | df.diverged).sum())
    assert n_counted > 0
    fig = edf_figure(df, bootstrap="band")
    assert sum(int(LABEL.match(t.name)["n"]) for t in traces(fig, "edf")) == n_counted
    assert all(b.meta["percentiles"][0] <= b.meta["percentiles"][2] for b in traces(fig, "bootstrap"))
    assert summary_table(df)["n"].sum() == n_counted
    assert all(min(t.x) == 0 for t in traces(edf_figure(df, relative=True), "edf"))
    sens = sensitivity_figure(df)
    assert sum(len(t.x) for t in sens.data) == n_counted
    assert len(traces(epochs_figure(df), "epochs")) == summary_table(df).query("n > 0").shape[0]
    curves = curves_figure(df, metrics=["train_loss", "lr"])
    for row in df.itertuples():
        (loss,) = [t for t in curves.data if t.meta == {"kind": "train_loss", "group": row.run}]
        assert len(loss.x) == row.epochs_done
        assert np.allclose(loss.y, read_metrics(row.run_dir)["train_loss"], equal_nan=True)
