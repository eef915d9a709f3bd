"""The explorers: sweep results (SensitivityExplorer) and trained runs (AttentionExplorer,
FilterExplorer), ipywidgets 8 with plotly figures shown in `FigureOutput`s.

Each explorer composes figure builders from `analysis.plots`: its controls filter the input,
the builders make fresh figures, `sync_figure` copies them into long-lived figures (`.edf_fig`,
`.fig`, ...: their traces change in place) and each figure's `FigureOutput` (`.edf_view`, `.view`,
...) shows its new state.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.errors import ConfigError, one_of
from analysis.frame import as_columns, check_frame, counted_errors, diverged_mask, group_keys
from analysis.plots.maps import attention_overlay_figure, image_axes, tiles_figure
from analysis.plots.stability import DEFAULT_BY, edf_figure, sensitivity_figure
from analysis.plots.style import TEMPLATE, head_stems, style_maps, wrap_title
from analysis.widgets.base import (
    Explorer,
    FigureOutput,
    filter_frame,
    log_range_slider,
    message_figure,
    multi_select,
    sync_figure,
)

# ---------------------------------------------------------------- hyperparameter sensitivity


class SensitivityExplorer(Explorer):
    """Explore how error depends on stem, optimizer, schedule length, lr and wd.

    Controls (in `.controls`): multi-selects "stem", "model", "optimizer", "epochs", "preset"
    (those the frame has); log range sliders narrowing lr and wd, one pair per `row` value (the
    optimizer by default, whose lr ranges differ by 100x), named "lr <row value>" and "wd <row
    value>" ("lr" and "wd" without rows); a "relative" toggle (delta to each group's best) and a
    "bootstrap" toggle (pycls band on the EDF). Figures: `.edf_fig` (EDF per `by` group) and
    `.scatter_fig` (error over lr x wd, one panel per `panel` value and `row` value), both
    updated in place and shown by `.edf_view` and `.scatter_view`; with no run selected both show a message instead.
    `.filtered()` gives the runs currently shown. Colours, dashes, the panel grid and the colour
    scale come from the full frame so they stay put while filtering. `width` sets both figures'
    width in pixels (None: plotly's default).
    """

    SELECTS = ("stem", "model", "optimizer", "epochs", "preset")

    def __init__(
        self,
        df: pd.DataFrame,
        by: str | Sequence[str] = DEFAULT_BY,
        panel: str = "stem",
        row: str | None = "optimizer",
        width: int | None = 860,
    ) -> None:
        super().__init__()
        self.width = width
        self.by = as_columns(by)
        self.panel, self.row = panel, row
        check_frame(df, [*self.by, panel, "lr", "wd", "error"] + ([row] if row else []))
        self.df = df

        for name in self.SELECTS:
            if name in df.columns and df[name].notna().any():
                self.controls[name] = multi_select(df[name], name)
        self.panels = sorted(df[panel].dropna().unique().tolist())
        self.rows = sorted(df[row].dropna().unique().tolist()) if row else None
        slider_lines = self._sliders()
        self.controls["relative"] = widgets.ToggleButton(
            value=False, description="relative to best", tooltip="error minus each group's best run"
        )
        self.controls["bootstrap"] = widgets.ToggleButton(
            value=False, description="bootstrap band", tooltip="2.5-97.5% of the best of 25% resamples"
        )

        self.colors, self.dashes = style_maps(group_keys(df, self.by), head_stems(df, self.by))
        self.color_ranges = {rel: self._color_range(rel) for rel in (False, True)}

        self.edf_fig, self.scatter_fig = go.Figure(), self._scatter(df)
        self.edf_view, self.scatter_view = FigureOutput(), FigureOutput()
        self.widget = self._layout(slider_lines)
        self.update()
        self.watch()

    def _sliders(self) -> list[widgets.HBox]:
        """Add the lr and wd range sliders to the controls, a pair per row value; return their lines."""
        lines = []
        for group in self.rows or [None]:
            rows = self.df if group is None else self.df[self.df[self.row].eq(group)]
            line = []
            for name in ("lr", "wd"):
                key = name if group is None else f"{name} {group}"
                slider = log_range_slider(rows[name], key)
                if slider is not None:
                    self.controls[key] = slider
                    line.append(slider)
            lines.append(widgets.HBox(line))
        return lines

    def _layout(self, slider_lines: list[widgets.HBox]) -> widgets.VBox:
        selects = [self.controls[n] for n in self.SELECTS if n in self.controls]
        toggles = widgets.VBox([self.controls["relative"], self.controls["bootstrap"]])
        return widgets.VBox(
            [
                widgets.HBox(selects),
                widgets.HBox([widgets.VBox(slider_lines), toggles]),
                self.status,
                self.edf_view,
                self.scatter_view,
            ]
        )

    def _color_range(self, relative: bool) -> list[float]:
        try:
            fig = sensitivity_figure(self.df, panel=self.panel, row=self.row, relative=relative)
        except ConfigError:
            return [0.0, 1.0]
        return [fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax]

    def _scatter(self, df: pd.DataFrame, relative: bool = False) -> go.Figure:
        """The lr x wd panels of the panel and row values `df` has (a deselected optimizer leaves no
        empty panels), in the full frame's order and colour scale."""
        panels = [p for p in self.panels if df[self.panel].eq(p).any()]
        rows = None if self.rows is None else [r for r in self.rows if df[self.row].eq(r).any()]
        fig = sensitivity_figure(
            df,
            panel=self.panel,
            row=self.row,
            relative=relative,
            panels=panels,
            rows=rows,
            color_range=self.color_ranges[relative],
        )
        return fig.update_layout(width=self.width)

    def selections(self) -> dict[str, tuple]:
        """Return {column: selected values} of the multi-selects."""
        return {n: tuple(self.controls[n].value) for n in self.SELECTS if n in self.controls}

    def ranges(self) -> dict:
        """Return {row value (None without rows): {"lr": (low, high), "wd": (low, high)}} of the sliders."""
        out = {}
        for group in self.rows or [None]:
            keys = {name: name if group is None else f"{name} {group}" for name in ("lr", "wd")}
            out[group] = {name: self.controls[key].value for name, key in keys.items() if key in self.controls}
        return out

    def filtered(self) -> pd.DataFrame:
        """Return the runs the controls currently select."""
        df = filter_frame(self.df, self.selections())
        keep = pd.Series(False, index=df.index)
        for group, ranges in self.ranges().items():
            rows = df if group is None else df[df[self.row].eq(group).fillna(False).astype(bool)]
            if len(rows):
                keep[filter_frame(rows, ranges=ranges).index] = True
        return df[keep]

    def _show_message(self, text: str) -> None:
        sync_figure(self.edf_fig, message_figure(text, width=self.width))
        sync_figure(self.scatter_fig, message_figure(text, width=self.width))
        self.edf_view.show(self.edf_fig)
        self.scatter_view.show(self.scatter_fig)

    def update(self) -> None:
        """Redraw both figures from the current selection (in place)."""
        df = self.filtered()
        relative = self.controls["relative"].value
        bootstrap = "band" if self.controls["bootstrap"].value else None
        if df.empty:
            self._show_message("no runs selected: widen the selection or the lr / wd ranges")
            self.set_status(f"no runs selected (of {len(self.df)})")
            return
        try:
            edf = edf_figure(
                df, by=self.by, relative=relative, bootstrap=bootstrap, colors=self.colors, dashes=self.dashes
            )
        except ConfigError as err:
            self._show_message(str(err))
            self.set_status(f"{len(df)} runs selected: {err}")
            return
        sync_figure(self.edf_fig, edf.update_layout(width=self.width))
        sync_figure(self.scatter_fig, self._scatter(df, relative))
        self.edf_view.show(self.edf_fig)
        self.scatter_view.show(self.scatter_fig)
        counted = counted_errors(df)
        n_div = int(diverged_mask(df).loc[counted.index].sum())
        self.set_status(
            f"{len(counted)} runs shown of {len(self.df)}: {n_div} diverged, "
            f"{len(df) - len(counted)} failed or unfinished in the selection"
        )


# ---------------------------------------------------------------- attention and first-layer filters of trained runs

ATTENTION_METHODS = ("attention", "rollout", "gradient rollout")
FILTER_VIEWS = ("filters", "principal components")
CHECKPOINTS = ("trained", "initial")


def run_labels(run_dirs) -> dict[str, Path]:
    """Return {label: run_dir} from a {label: run_dir} mapping, one run directory or a list of them.

    Listed runs are labelled by their model name (e.g. "ViT_C-fmnist_tiny"); a repeated name gets
    the folder name added. A mapping's values may be any source analysis.runs.as_model takes.
    """
    from analysis.runs import load_config
    from analysis.names import model_name, stem_of_config

    if isinstance(run_dirs, Mapping):
        out = {str(k): Path(v) if isinstance(v, (str, Path)) and Path(v).is_dir() else v for k, v in run_dirs.items()}
    else:
        out = {}
        for d in [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs):
            cfg = load_config(d)
            label = model_name(cfg.model.preset, stem_of_config(cfg))
            out[f"{label} ({Path(d).name})" if label in out else label] = Path(d)
    if not out:
        raise ConfigError("no runs given: pass {label: run_dir} or a list of run directories")
    return out


def _test_images(images, cfg, names, n: int) -> tuple[torch.Tensor, list]:
    """The explorer's images (given, or n test images of the run's data) and the dropdown's options."""
    from analysis.runs import sample_images

    if images is None:
        images, labels, _ = sample_images(cfg, n=n)
        return images, [(f"{i}: {names[int(y)]}", i) for i, y in enumerate(labels)]
    images = torch.as_tensor(images, dtype=torch.float32)
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(f"images must be (B, C, H, W) normalised test images, got shape {tuple(images.shape)}")
    return images, [(f"image {i}", i) for i in range(len(images))]


def _attention_models(run_dirs: dict, trust_code: bool) -> dict:
    """{label: model} of the runs, loaded with unfused attention; a model without a ViT's token
    layout is refused, naming its label."""
    from analysis.probes import as_model, token_layout
    from analysis.probes.attention import attention_model

    models = {label: as_model(d, fused_attn=False, trust_code=trust_code) for label, d in run_dirs.items()}
    for label, model in models.items():
        try:
            token_layout(attention_model(model))
        except ConfigError as e:
            raise ConfigError(f"{label}: {e}") from None
    return models


class AttentionExplorer(Explorer):
    """Attention maps of trained ViTs side by side: pick an image, a block, a head and a method.

    Methods: "attention" (the class token's softmaxed attention to the patch tokens in one block
    and head), "rollout" (all blocks, heads averaged) and "gradient rollout" (weighted by the
    gradient of the predicted class). Controls (in `.controls`): "image", "method", "layer",
    "head". A model with fewer blocks or heads than the slider shows its last one. `.fig` is one
    figure: the image, then each model's map over it; its traces change in place and `.view`
    shows it. Images: `images` (normalised test images), else `n` test images of the first run's data.
    """

    def __init__(
        self,
        run_dirs,
        images: torch.Tensor | None = None,
        n: int = 8,
        opacity: float = 0.6,
        trust_code: bool = False,
    ) -> None:
        from analysis.runs import class_names, load_config

        super().__init__()
        self.run_dirs = run_labels(run_dirs)
        self.models = _attention_models(self.run_dirs, trust_code)
        run_dir = next((d for d in self.run_dirs.values() if isinstance(d, Path)), None)
        if run_dir is None and images is None:
            raise ConfigError("no run folder among the models to take test images from; pass images=")
        cfg = load_config(run_dir) if run_dir is not None else None
        names = class_names(cfg) if cfg is not None else None
        images, options = _test_images(images, cfg, names, n)
        self.images, self.opacity = images, opacity
        self.probs = self._predict()
        classes = next(iter(self.probs.values())).shape[-1]
        self.class_names = names or tuple(f"class {i}" for i in range(classes))
        self._maps: dict[tuple[str, str], torch.Tensor] = {}
        self._add_controls(options)
        self.fig = self._figure()
        self.view = FigureOutput()
        c = self.controls
        self.widget = widgets.VBox(
            [widgets.HBox([c["image"], c["method"]]), widgets.HBox([c["layer"], c["head"]]), self.status, self.view]
        )
        self.update()
        self.watch()

    def _predict(self) -> dict[str, torch.Tensor]:
        """Return {label: class probabilities of every image} of each model."""
        from analysis.probes.layout import evaluating

        probs = {}
        for label, m in self.models.items():
            with evaluating(m), torch.no_grad():
                probs[label] = m(self.images).softmax(-1)
        return probs

    def _add_controls(self, options: list) -> None:
        """The image and method dropdowns, and block and head sliders as deep and wide as the largest model."""
        depth = max(len(m.blocks) for m in self.models.values())
        heads = max(m.blocks[0].attn.num_heads for m in self.models.values())
        self.controls["image"] = widgets.Dropdown(options=options, value=0, description="image")
        self.controls["method"] = widgets.Dropdown(
            options=list(ATTENTION_METHODS), value="attention", description="method"
        )
        self.controls["layer"] = widgets.IntSlider(
            value=depth - 1, min=0, max=depth - 1, description="block", continuous_update=False
        )
        self.controls["head"] = widgets.IntSlider(
            value=0, min=0, max=heads - 1, description="head", continuous_update=False
        )

    def _figure(self) -> go.Figure:
        """One row of panels: the image, then each model's map over it."""
        labels = list(self.models)
        fig = go.Figure(
            make_subplots(rows=1, cols=1 + len(labels), subplot_titles=["image", *labels], horizontal_spacing=0.03)
        )
        first = self._panel(labels[0])
        fig.add_trace(first.data[0], row=1, col=1)
        for i, label in enumerate(labels):
            for trace in (first if i == 0 else self._panel(label)).data:
                fig.add_trace(trace, row=1, col=i + 2)
        image_axes(fig)
        # each map has its own range: one colour bar would mislead
        fig.update_traces(showscale=False, selector=dict(type="heatmap"))
        fig.update_layout(template="plotly_white", height=360, margin=dict(l=10, r=10, t=80, b=10))
        return fig

    def maps(self, label: str, method: str) -> torch.Tensor:
        """Return one model's maps for every image: (B, layers, heads, H, W) for "attention",
        (B, H, W) for the rollouts. Computed once per model and method."""
        from analysis.probes import class_token_attention, gradient_rollout, rollout_maps

        if method not in ATTENTION_METHODS:
            raise one_of("method", method, ATTENTION_METHODS)
        key = (label, method)
        if key not in self._maps:
            fn = {"attention": class_token_attention, "rollout": rollout_maps, "gradient rollout": gradient_rollout}
            self._maps[key] = fn[method](self.models[label], self.images)
        return self._maps[key]

    def current(self, label: str) -> tuple[np.ndarray, str]:
        """Return (the (H, W) map the controls select for one model, its panel title)."""
        c = {k: w.value for k, w in self.controls.items()}
        maps = self.maps(label, c["method"])[c["image"]]
        if c["method"] != "attention":
            return maps.numpy(), f"{label}<br>{c['method']}"
        layer, head = min(c["layer"], maps.shape[0] - 1), min(c["head"], maps.shape[1] - 1)
        return maps[layer, head].numpy(), f"{label}<br>block {layer}, head {head}"

    def _panel(self, label: str) -> go.Figure:
        return attention_overlay_figure(
            self.images[self.controls["image"].value], self.current(label)[0], opacity=self.opacity
        )

    def update(self) -> None:
        """Redraw the image and every model's map (in place)."""
        i = self.controls["image"].value
        attention = self.controls["method"].value == "attention"
        self.controls["layer"].disabled = self.controls["head"].disabled = not attention
        titles = ["image"]
        with self.fig.batch_update():
            for k, label in enumerate(self.models):
                panel = self._panel(label)
                if k == 0:
                    self.fig.data[0].z = panel.data[0].z
                self.fig.data[1 + 2 * k].z = panel.data[0].z
                self.fig.data[2 + 2 * k].z = panel.data[1].z
                titles.append(self.current(label)[1])
            for annotation, title in zip(self.fig.layout.annotations, titles):
                annotation.text = title
        self.view.show(self.fig)
        guesses = []
        for label, p in self.probs.items():
            top = int(p[i].argmax())
            guesses.append(f"{label} predicts {self.class_names[top]} ({float(p[i, top]):.2f})")
        self.set_status(" · ".join(guesses))


class FilterExplorer(Explorer):
    """First-layer filters of trained ViTs: pick a model, trained or initial weights, and raw
    filters or their principal components.

    Controls (in `.controls`): "model", "checkpoint" (trained / initial), "view" (filters /
    principal components), "count" (tiles shown). `.fig` shows the tiles, `.variance_fig` the
    cumulative explained variance of the filters' PCA; both change in place and are shown by
    `.view` and `.variance_view`.
    """

    TILES_WIDTH = 520  # px; with the 400 px variance curve beside it the pair fits a notebook cell

    def __init__(self, run_dirs, max_tiles: int = 64, trust_code: bool = False) -> None:
        super().__init__()
        self.run_dirs = run_labels(run_dirs)
        self.trust_code = trust_code  # import the runs' stem import paths (analysis.trust)
        self._filters: dict[tuple[str, str], np.ndarray] = {}
        self.controls["model"] = widgets.Dropdown(options=list(self.run_dirs), description="model")
        self.controls["checkpoint"] = widgets.ToggleButtons(
            options=list(CHECKPOINTS), value="trained", description="weights", style={"button_width": "auto"}
        )
        self.controls["view"] = widgets.ToggleButtons(
            options=list(FILTER_VIEWS), value="filters", description="view", style={"button_width": "auto"}
        )
        self.controls["count"] = widgets.IntSlider(
            value=min(32, max_tiles), min=1, max=max_tiles, description="tiles", continuous_update=False
        )
        self.fig, self.variance_fig = go.Figure(), go.Figure()
        self.view, self.variance_view = FigureOutput(), FigureOutput()
        c = self.controls
        self.widget = widgets.VBox(
            [
                widgets.HBox([c["model"], c["count"]]),
                widgets.HBox([c["checkpoint"], c["view"]]),
                self.status,
                widgets.HBox([self.view, self.variance_view]),
            ]
        )
        self.update()
        self.watch()

    def filters(self, label: str, checkpoint: str) -> np.ndarray:
        """Return the (d, C, k, k) first-layer filters of one run's trained or initial weights (loaded once)."""
        from analysis.probes import as_model, first_layer_filters

        if checkpoint not in CHECKPOINTS:
            raise one_of("checkpoint", checkpoint, CHECKPOINTS)
        key = (label, checkpoint)
        if key not in self._filters:
            model = as_model(self.run_dirs[label], initial=checkpoint == "initial", trust_code=self.trust_code)
            self._filters[key] = first_layer_filters(model)
        return self._filters[key]

    def update(self) -> None:
        """Redraw the tiles and the explained variance of the chosen model and weights (in place)."""
        from analysis.probes import filter_pca

        c = {k: w.value for k, w in self.controls.items()}
        w = self.filters(c["model"], c["checkpoint"])
        pca = filter_pca(w)
        name = f"{c['model']} {c['checkpoint']}"
        if c["view"] == "filters":
            n = min(c["count"], len(w))
            fig = tiles_figure(w[:n], title=f"{name}: {n} of {len(w)} filters")
        else:
            n = min(c["count"], len(pca.explained_variance_ratio))
            fig = tiles_figure(
                pca.top(n),
                explained_variance=pca.explained_variance_ratio[:n],
                title=f"{name}: {n} principal components",
            )
        title = wrap_title(fig.layout.title.text, self.TILES_WIDTH - 40, 15)
        fig.update_layout(
            width=self.TILES_WIDTH,
            height=520,
            title=dict(text=title, font_size=15),
            margin=dict(t=30 + 20 * (title.count("<br>") + 1)),
        )
        sync_figure(self.fig, fig)
        ratio = pca.explained_variance_ratio
        curve = go.Figure(go.Scatter(x=np.arange(1, len(ratio) + 1), y=ratio.cumsum(), mode="lines+markers", name=name))
        curve.update_layout(
            template=TEMPLATE,
            title=dict(text="cumulative explained variance", font_size=15),
            width=400,
            height=520,
            xaxis_title="components",
            yaxis=dict(title="explained variance", range=[0, 1.02]),
        )
        sync_figure(self.variance_fig, curve)
        self.view.show(self.fig)
        self.variance_view.show(self.variance_fig)
        k = min(3, len(ratio))
        self.set_status(
            f"{name}: {len(w)} filters of shape {tuple(w.shape[1:])}; the first {k} principal "
            f"components explain {100 * ratio[:k].sum():.1f}% of their variance"
        )
