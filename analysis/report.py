"""One self-contained HTML report of a sweep: the claims table, the summary table, EDFs,
stability plots, attention maps and filters of each model's best run, and, when the sweep holds a
CNN baseline, CKA and linear probes of the ViTs against it. Works offline (plotly.js is inlined).

    python -m analysis report sweeps/demo            # -> sweeps/demo/report.html
"""

from __future__ import annotations

import html
import os
import shutil
import time
import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from analysis import rundir, trust
from analysis.errors import ConfigError

PROBE_IMAGES = 6
CNN_IMAGES = 256  # test images for CKA and linear probes against a CNN baseline


def best_runs(df: pd.DataFrame, by: str = "model") -> pd.DataFrame:
    """The finished, non-diverged run with the lowest error in each group."""
    done = df[(df["status"] == "completed") & ~df["diverged"].astype(bool) & df["error"].notna()]
    if done.empty:
        return done
    return done.loc[done.groupby(by)["error"].idxmin()].sort_values(by)


def headline(df: pd.DataFrame, within: float = 4.0) -> pd.DataFrame:
    """Best and median error per model and optimizer, the fraction of runs within `within` points
    of the best, and the diverged fraction: the numbers the paper reads off its EDFs."""
    from analysis.plots.stability import summary_table

    cols = ["model", "optimizer"] if "optimizer" in df else ["model"]
    table = summary_table(df, by=cols, within=within)
    keep = [*cols, "n", "best", "median", f"within_{within:g}", "diverged_frac", "failed"]
    return table[[c for c in keep if c in table]]


def _probe_figures(label: str, model, cfg) -> list[tuple[str, go.Figure]]:
    """Filters, filter principal components and attention rollout of one trained ViT."""
    from analysis.plots.maps import attribution_figure, tiles_figure
    from analysis.probes import filter_pca, first_layer_filters, gradient_rollout, rollout_maps
    from analysis.runs import sample_images

    figs = []
    w = first_layer_filters(model)
    figs.append(
        (
            f"{label}: first-layer filters ({w.shape[-1]}x{w.shape[-1]})",
            tiles_figure(w[:32], title=f"{label} first-layer filters"),
        )
    )
    pca = filter_pca(w)
    k = min(16, len(pca.explained_variance_ratio))
    figs.append(
        (
            f"{label}: principal components of the first-layer filters",
            tiles_figure(
                pca.top(k),
                explained_variance=pca.explained_variance_ratio[:k],
                title=f"{label} filter principal components",
            ),
        )
    )
    images, _, raw = sample_images(cfg, n=PROBE_IMAGES)
    maps = {"rollout": rollout_maps(model, images), "gradient rollout": gradient_rollout(model, images)}
    figs.append(
        (
            f"{label}: attention rollout on test images",
            attribution_figure(raw, maps, max_images=PROBE_IMAGES, signed=False, title=f"{label} attention rollout"),
        )
    )
    return figs


def _best_models(best: pd.DataFrame, skipped: list | None = None, trust_code: bool = False) -> dict:
    """{model label: (trained model, its config)} of the best runs, each loaded once. A run that
    cannot be loaded (unreadable checkpoint or config, a stem import path not trusted) is left out
    and added to `skipped` as (run, reason)."""
    from analysis import rundir
    from analysis.runs import load_config, load_model

    out = {}
    for _, row in best.iterrows():
        try:
            model = load_model(row["run_dir"], trust_code=trust_code)
            cfg = load_config(row["run_dir"])
        except Exception as e:  # noqa: BLE001 - the report goes on without this run's probes
            if skipped is not None:
                skipped.append((row["run"], rundir.failure_reason(e)))
            continue
        out[row["model"]] = (model, cfg)
    return out


def _distance_figure(vits: dict) -> go.Figure:
    from analysis.plots.maps import distance_figure
    from analysis.probes import attention_distance, uniform_distance
    from analysis.runs import sample_images

    frames = {
        label: attention_distance(model, [sample_images(cfg, n=64, one_per_class=False)[0]])
        for label, (model, cfg) in vits.items()
    }
    uniform = {round(uniform_distance(model), 6) for model, _ in vits.values()}
    return distance_figure(
        frames, title="Mean attention distance per head (pixels)", uniform=uniform.pop() if len(uniform) == 1 else None
    )


def _cnn_figures(vits: dict, cnns: dict) -> list[tuple[str, go.Figure]]:
    """When the sweep trained a CNN baseline: layer-by-layer CKA of each best ViT against it and of
    the ViTs against each other (Raghu et al.), and layerwise linear probes of every model, fit on
    the first half of CNN_IMAGES test images and scored on the second half. vits, cnns: {label:
    (model, config)} of the loaded best runs."""
    from analysis.plots.representations import cka_pairs_figure, linear_probe_figure
    from analysis.probes import cka_pairs, linear_probes
    from analysis.runs import sample_images

    if not cnns or not vits:
        return []
    vit_labels = sorted(vits, key=lambda label: "ViT_P" not in label)
    models = {label: (vits | cnns)[label][0] for label in [*vit_labels, *cnns]}
    x, y, _ = sample_images(next(iter(cnns.values()))[1], n=CNN_IMAGES, one_per_class=False)
    pairs = [(v, c) for v in vit_labels for c in cnns]
    pairs += [(a, b) for i, a in enumerate(vit_labels) for b in vit_labels[i + 1 :]]
    cka = cka_pairs(models, list(zip(x.split(64), y.split(64))), pairs)
    half = len(x) // 2
    probes = {label: linear_probes(m, [(x[:half], y[:half])], [(x[half:], y[half:])]) for label, m in models.items()}
    return [
        ("Layer-by-layer CKA of the ViTs against the CNN baseline", cka_pairs_figure(cka)),
        (
            "Layerwise linear probes of the ViTs and the CNN baseline (held-out half of the probe images)",
            linear_probe_figure(probes),
        ),
    ]


def _section(heading: str, build) -> tuple[str, go.Figure | str]:
    """(heading, figure), or (heading, the one sentence saying why there is none) when the sweep's runs
    cannot make it yet (a group without finished runs, a running sweep): a report is never all or nothing."""
    try:
        return heading, build()
    except ConfigError as e:
        return heading, f"Not drawn: {e}."


def figures(
    df: pd.DataFrame, probes: bool = True, skipped: list | None = None, trust_code: bool = False
) -> list[tuple[str, go.Figure | str]]:
    """(heading, figure or the sentence why it is missing) pairs of the report, in order. Runs whose probes were left out (their
    checkpoint could not be loaded) are appended to `skipped` as (run, reason). trust_code: import
    the stem import paths the runs' configs name (analysis.trust)."""
    from analysis.plots.curves import curves_figure
    from analysis.plots.stability import edf_figure, epochs_figure, optimizer_gap_figure, sensitivity_figure

    out = [
        _section("Error EDFs (diverged runs counted at 100%)", lambda: edf_figure(df)),
        _section(
            "Error relative to each group's best run, with bootstrap band",
            lambda: edf_figure(df, relative=True, bootstrap="band"),
        ),
    ]
    if df["lr"].nunique() > 1 and df["wd"].nunique() > 1:
        out.append(_section("lr / wd sensitivity", lambda: sensitivity_figure(df)))
    if df["epochs"].nunique() > 1:
        out.append(_section("Error against training length", lambda: epochs_figure(df)))
    if any({"adamw", "sgd"} <= set(opts) for opts in df.groupby("model")["optimizer"].unique()):
        out.append(_section("Optimizer gap (SGD minus AdamW)", lambda: optimizer_gap_figure(df)))
    best = best_runs(df)
    if not best.empty:
        labels = list(best["model"] + " " + best["optimizer"])
        out.append(_section("Training curves of each model's best run", lambda: curves_figure(best, labels=labels)))
        loaded = _best_models(best, skipped, trust_code) if probes else {}  # best_runs gives one run per model
        vits = {k: v for k, v in loaded.items() if getattr(v[0], "family", "vit") == "vit"}
        cnns = {k: v for k, v in loaded.items() if getattr(v[0], "family", "vit") == "cnn"}
        if vits:
            out.append(("Mean attention distance", _distance_figure(vits)))
        for label, (model, cfg) in vits.items():
            out += _probe_figures(label, model, cfg)
        out += _cnn_figures(vits, cnns)
    return out


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0, classes="summary")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table.summary{border-collapse:collapse}table.summary td,table.summary th{padding:4px 10px;
border-bottom:1px solid #eee;text-align:right}.meta{color:#666}"""


def write_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    probes: bool = True,
    png_dir: str | Path | None = None,
    trust_code: bool = False,
) -> Path:
    """Collect the sweep, build every figure and write one offline HTML file; return its path.
    With png_dir, each figure is also exported as PNG through kaleido (needs Chromium). A run whose
    stem is an import path is probed only with trust_code=True (analysis.trust)."""
    from analysis.claims import claims_html, claims_table
    from analysis.sweeps import collect

    sweep_dir = Path(sweep_dir)
    if not out:
        out = sweep_dir / rundir.REPORT
        trust.check_inside(sweep_dir, [out])
    df = collect(sweep_dir)
    if df.empty:
        raise ConfigError(f"{sweep_dir} holds no runs to report on; launch the sweep first")
    out = Path(out)
    table = claims_table(df)
    claims = claims_html(table)
    skipped: list[tuple[str, str]] = []
    figs = figures(df, probes=probes, skipped=skipped, trust_code=trust_code)
    parts = [
        *_intro_html(sweep_dir.name, df),
        "<h2>The paper's claims (95% bootstrap intervals)</h2>",
        claims,
        *_regime_section(df, table),
        "<h2>Summary</h2>",
        _table_html(headline(df)),
    ]
    if skipped:
        parts.append(_skipped_html(skipped))
        for run, why in skipped:
            warnings.warn(f"report: probes of run {run} skipped ({why})", stacklevel=2)
    parts += _figures_html(figs)
    page = _page_html(sweep_dir.name, parts)
    rundir.write_output(out, page.encode())  # temp file and rename: never a torn page, never a hard link's target
    if png_dir:
        export_png([f for _, f in figs if not isinstance(f, str)], png_dir)
    return out


def _intro_html(name: str, df: pd.DataFrame) -> list[str]:
    """The report's title, a warning line while runs are unfinished, and the runs per status."""
    counts = df["status"].value_counts().to_dict()
    finished = int(df["status"].isin(["completed", "diverged"]).sum())
    partial = (
        f"<p class=meta><b>partial: {finished} of {len(df)} runs finished</b>; sections without runs say so</p>"
        if finished < len(df)
        else ""
    )
    return [
        f"<h1>Conv vs patchify stems: {html.escape(name)}</h1>",
        partial,
        f"<p class=meta>{len(df)} runs ({html.escape(', '.join(f'{v} {k}' for k, v in counts.items()))}); "
        f"written {time.strftime('%Y-%m-%d %H:%M')}</p>",
    ]


def _skipped_html(skipped: list[tuple[str, str]]) -> str:
    """The section naming the runs whose probes were left out, and why."""
    items = "".join(f"<li>{html.escape(run)}: {html.escape(why)}</li>" for run, why in skipped)
    return f"<h2>Probes skipped</h2><p>These runs' attention maps and filters are left out:</p><ul>{items}</ul>"


def _figures_html(figs: list[tuple[str, go.Figure | str]]) -> list[str]:
    """Each figure under its heading, or the sentence why it is missing."""
    parts = []
    for heading, fig in figs:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(fig, str):
            parts.append(f"<p class=meta>{html.escape(fig)}</p>")
        else:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    return parts


def _page_html(name: str, parts: list[str]) -> str:
    """The whole offline page: the style and plotly.js inlined in the head, `parts` as the body."""
    import plotly.offline

    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(name)}</title>"
        f"<style>{STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>"
    )


def _regime_section(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """For a sweep with several settings (a regime study): each regime's cost and stability claims
    reproduced, and the forest plot of the claims per regime. Nothing for a single setting."""
    from analysis.plots import forest_figure
    from analysis.regimes import regime_summary

    if table.empty or table["setting"].nunique() < 2 or "seconds" not in df:
        return []
    summary = regime_summary(df, table)
    shown = summary[
        [
            "setting",
            "runs",
            "cpu_minutes",
            "seconds_per_run",
            "work_gflop",
            "fits_budget",
            "reproduced",
            "contradicted",
            "inconclusive",
        ]
    ]
    return [
        "<h2>Regimes: the stability claims per setting</h2>",
        "<p class=meta>reproduced / contradicted / inconclusive count the stability claims (optimizer-gap "
        "differences, within-k and EDF-area differences per optimizer, ViT_C's optimizer gap); CPU minutes "
        "are the runs' training seconds added up.</p>",
        _table_html(shown.round(2)),
        forest_figure(table).to_html(full_html=False, include_plotlyjs=False),
    ]


def export_png(figs: list[go.Figure], folder: str | Path) -> list[Path]:
    """Write each figure as PNG through kaleido, using the system Chromium."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chrome is None:
        raise ConfigError(
            "PNG export needs Chromium: install it with `apt-get install chromium` (or scripts/install_browser.sh)"
        )
    os.environ.setdefault("BROWSER_PATH", chrome)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, fig in enumerate(figs):
        path = folder / f"figure_{i:02d}.png"
        fig.write_image(path, width=1000, height=fig.layout.height or 500)
        paths.append(path)
    return paths
