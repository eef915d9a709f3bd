"""SensitivityExplorer and the shared widget helpers, driven as a notebook user would."""

import re

import numpy as np
import plotly.graph_objects as go
import pytest
from tests.fixtures_sweep import sweep, sweep_frame  # noqa: F401  (pytest fixtures)

from analysis.errors import ConfigError
from analysis.widgets import (
    FigureOutput,
    SensitivityExplorer,
    filter_frame,
    log_range_slider,
    multi_select,
    sync_figure,
)


def shown_figure(view) -> dict:
    """Return the plotly figure (data, layout) that a FigureOutput `view` holds as its one output."""
    (output,) = view.outputs
    return output["data"]["application/vnd.plotly.v1+json"]


def kind(fig, name):
    """Return the traces whose meta kind is `name`."""
    return [t for t in fig.data if t.meta and t.meta["kind"] == name]


def legend_n(fig) -> dict[str, int]:
    """Return {group: n} read from the EDF legend labels."""
    return {t.meta["group"]: int(re.search(r"n=(\d+)", t.name)[1]) for t in kind(fig, "edf")}


@pytest.fixture
def explorer(sweep):
    return SensitivityExplorer(sweep)


def test_explorer_starts_with_every_run(explorer, sweep):
    assert set(explorer.controls) >= {
        "stem",
        "model",
        "optimizer",
        "epochs",
        "preset",
        "lr adamw",
        "lr sgd",
        "wd adamw",
        "wd sgd",
        "relative",
        "bootstrap",
    }
    assert len(explorer.filtered()) == len(sweep)
    assert sum(legend_n(explorer.edf_fig).values()) == sweep.error.notna().sum()
    runs = kind(explorer.scatter_fig, "runs")
    assert sum(len(t.x) for t in runs) == (sweep.error.notna() & ~sweep.diverged).sum()
    assert explorer.edf_view in explorer.widget.children and explorer.scatter_view in explorer.widget.children
    for view, fig in ((explorer.edf_view, explorer.edf_fig), (explorer.scatter_view, explorer.scatter_fig)):
        shown = shown_figure(view)  # the page gets the figure itself, as a plain plotly output
        assert len(shown["data"]) == len(fig.data) and shown["layout"]["width"] == 860
    assert explorer.edf_fig.layout.width == explorer.scatter_fig.layout.width == 860


def test_lr_slider_of_one_optimizer_narrows_only_its_runs_in_place(explorer, sweep):
    edf_widget, scatter_widget = explorer.edf_fig, explorer.scatter_fig
    first_trace = scatter_widget.data[0]
    adamw = explorer.controls["lr adamw"]
    low, high = adamw.bounds
    assert low <= sweep[sweep.optimizer == "adamw"].lr.min() and high >= sweep[sweep.optimizer == "adamw"].lr.max()
    assert high < sweep[sweep.optimizer == "sgd"].lr.min()  # each optimizer slides over its own range
    shown = shown_figure(explorer.scatter_view)
    adamw.value = (low, 1e-3)
    assert explorer.edf_fig is edf_widget and explorer.scatter_fig is scatter_widget
    assert shown_figure(explorer.scatter_view) != shown  # the view shows the narrowed runs
    assert scatter_widget.data[0] is first_trace  # same trace objects, new data
    assert adamw.readout.value.endswith("to 0.001") and adamw.slider.value[1] == pytest.approx(-3)
    done = sweep[sweep.error.notna()]
    kept = done[(done.optimizer == "sgd") | (done.lr <= 1e-3 * (1 + 1e-9))]
    assert 0 < len(kept) < len(done) and (kept.optimizer == "sgd").sum() == (done.optimizer == "sgd").sum()
    expected = kept.groupby(["model", "optimizer"]).size()
    assert legend_n(edf_widget) == {f"{m} {o}": n for (m, o), n in expected.items()}
    xs = np.concatenate(
        [np.asarray(t.x, dtype=float) for t in scatter_widget.data if t.meta["group"].endswith("adamw")]
    )
    assert len(xs) == len(kept[kept.optimizer == "adamw"]) and xs.max() <= 1e-3 * (1 + 1e-9)
    adamw.slider.value = (adamw.slider.min, adamw.slider.max)  # dragging the slider sets the value too
    assert adamw.value == pytest.approx((low, high))
    assert sum(legend_n(edf_widget).values()) == len(done)


def test_optimizer_selection_and_empty_selection(explorer, sweep):
    explorer.controls["optimizer"].value = ("adamw",)
    assert set(legend_n(explorer.edf_fig)) == {"ViT_C-fmnist adamw", "ViT_P-fmnist adamw"}
    panels = len(explorer.scatter_fig.layout.annotations)
    assert not [t for t in explorer.scatter_fig.data if t.meta["group"].endswith("sgd")]  # no empty sgd panels
    assert "shown of 91" in explorer.status.value

    explorer.controls["optimizer"].value = ()
    for fig in (explorer.edf_fig, explorer.scatter_fig):  # a message in the plot, no stale axes
        assert len(fig.data) == 0 and fig.layout.xaxis.visible is False
        assert fig.layout.annotations[0].text.startswith("no runs selected")
    assert "no runs selected" in explorer.status.value

    explorer.controls["optimizer"].value = ("adamw", "sgd")
    assert sum(legend_n(explorer.edf_fig).values()) == sweep.error.notna().sum()
    assert [t for t in explorer.scatter_fig.data if t.meta["group"].endswith("sgd")]
    assert len(explorer.scatter_fig.layout.annotations) > panels  # the sgd row's panel titles are back


def test_epochs_and_stem_selection(explorer, sweep):
    explorer.controls["epochs"].value = (40,)
    explorer.controls["stem"].value = ("conv",)
    assert legend_n(explorer.edf_fig) == {"ViT_C-fmnist adamw": 2, "ViT_C-fmnist sgd": 2}
    assert set(explorer.filtered()["epochs"]) == {40}


def test_relative_and_bootstrap_toggles(explorer):
    explorer.controls["relative"].value = True
    assert all(min(t.x) == 0.0 for t in kind(explorer.edf_fig, "edf"))
    assert explorer.edf_fig.layout.xaxis.title.text.startswith("error - best")
    cells = [t for t in kind(explorer.scatter_fig, "runs") if len(t.x)]
    assert all(min(t.marker.color) == pytest.approx(0.0) for t in cells)
    assert not kind(explorer.edf_fig, "bootstrap")
    explorer.controls["bootstrap"].value = True
    boots = kind(explorer.edf_fig, "bootstrap")
    assert len(boots) == 4 and all(b.meta["percentiles"][0] >= 0 for b in boots)
    explorer.controls["relative"].value = False
    assert min(kind(explorer.edf_fig, "edf")[0].x) > 0


def test_colours_stay_with_their_group(explorer):
    before = {t.meta["group"]: (t.line.color, t.line.dash) for t in kind(explorer.edf_fig, "edf")}
    explorer.controls["model"].value = ("ViT_P-fmnist",)
    after = {t.meta["group"]: (t.line.color, t.line.dash) for t in kind(explorer.edf_fig, "edf")}
    assert after and all(after[g] == before[g] for g in after)


def test_explorer_displays_as_a_widget_and_composes(explorer):
    import ipywidgets as widgets

    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.model_id
    assert explorer.children == (explorer.widget,)
    row = widgets.HBox([explorer, widgets.HTML("beside it")])  # a widget among widgets
    assert row.children[0] is explorer


def test_explorer_rejects_bad_columns(sweep):
    with pytest.raises(ConfigError, match="missing column 'nope'"):
        SensitivityExplorer(sweep, panel="nope")
    with pytest.raises(ConfigError, match="empty"):
        SensitivityExplorer(sweep.iloc[:0])


# ---------------------------------------------------------------- shared helpers


def test_figure_output_sends_only_changes():
    view = FigureOutput(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
    assert shown_figure(view)["data"][0]["y"] == [3, 4] and len(view.outputs) == 1
    assert view.show(go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))) is False  # the same figure: nothing sent
    assert view.show(go.Figure(go.Scatter(x=[1], y=[5]))) is True
    assert shown_figure(view)["data"][0]["y"] == [5] and len(view.outputs) == 1  # replaced, not appended


def test_sync_figure_in_place_and_swap():
    target = go.Figure(
        [go.Scatter(x=[1, 2], y=[3, 4], error_x=dict(array=[1, 1]))], layout=dict(title="old", xaxis=dict(range=[0, 9]))
    )
    trace = target.data[0]
    sync_figure(target, go.Figure([go.Scatter(x=[5], y=[6])], layout=dict(title="new")))
    assert target.data[0] is trace and list(trace.x) == [5] and list(trace.y) == [6]
    assert trace.error_x.array is None  # stale properties are cleared
    assert target.layout.title.text == "new" and target.layout.xaxis.range is None
    sync_figure(target, go.Figure([go.Bar(x=["a"], y=[1]), go.Scatter(x=[1], y=[1])]))
    assert [t.type for t in target.data] == ["bar", "scatter"]


def test_control_factories_and_filter(sweep):
    select = multi_select(sweep["epochs"], "epochs")
    assert select.value == (10, 20, 40) and all(type(v) is int for v in select.value)
    slider = log_range_slider(sweep["lr"], "lr")
    low, high = slider.value
    assert low <= sweep.lr.min() and high >= sweep.lr.max() and (low, high) == slider.bounds
    assert log_range_slider(sweep["lr"] * 0, "lr") is None
    picked = filter_frame(sweep, {"optimizer": ["sgd"]}, {"lr": (0.5, 1.0), "wd": (0.0, 1.0)})
    assert len(picked) and set(picked.optimizer) == {"sgd"} and picked.lr.between(0.5, 1.0).all()
    with pytest.raises(ConfigError, match="missing column 'nope'"):
        filter_frame(sweep, {"nope": [1]})


@pytest.mark.slow
def test_explorer_on_the_real_sweep(real_frame):
    df = real_frame
    explorer = SensitivityExplorer(df)
    counted = df[df.error.notna() | df.diverged]
    assert sum(legend_n(explorer.edf_fig).values()) == len(counted)
    explorer.controls["optimizer"].value = ("sgd",)
    expected = counted[counted.optimizer == "sgd"].groupby(["model", "optimizer"]).size()
    assert legend_n(explorer.edf_fig) == {f"{m} {o}": n for (m, o), n in expected.items()}
    xs = np.concatenate([np.asarray(t.x, dtype=float) for t in explorer.scatter_fig.data])
    assert sorted(xs) == pytest.approx(sorted(counted[counted.optimizer == "sgd"].lr))
