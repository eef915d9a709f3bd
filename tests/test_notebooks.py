"""Every notebook runs top to bottom on a fresh kernel with tiny parameters, and is committed clean.

The notebooks that need trained runs (01, 04, 05, 06, 08) share one session-wide root: the first one
trains the two tiny runs, the others reuse them (so do the explorer tests). 02 and 03 launch tiny
sweeps through the local launcher.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.fixtures_notebooks import REPO, execute_notebook
from tests.fixtures_real import REAL_SPEC

NOTEBOOKS = REPO / "notebooks"
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"

# The small training recipe of 01/04/05/06 shrunk to seconds: one epoch on 200 images.
TINY_TRAIN = {"epochs": 1, "train_per_class": 20, "test_per_class": 10}

# 02's sweep: the real small sweep's design (stems x optimizers, sampled lr and wd) at one run per
# cell and one epoch on 100 images.
SWEEP_SPEC = {
    **REAL_SPEC,
    "name": "nb_stability",
    "samples": 1,
    "base": {
        **REAL_SPEC["base"],
        "data": {"train_per_class": 10, "test_per_class": 10},
        "train": {**REAL_SPEC["base"]["train"], "epochs": 1},
    },
}

# 09's regime study: two regimes (patch 4 on 28 px, patch 16 on 64 px) x stems x optimizers, three
# (lr, wd) pairs each (the least the claims table's intervals take), one epoch on 100 images.
REGIME_SPEC = {
    "name": "nb_regimes",
    "samples": 3,
    "seed": 1,
    "base": {
        "data": {"train_per_class": 10, "test_per_class": 10},
        "train": {"epochs": 1, "batch_size": 50, "threads": 1, "precision": "fp32", "progress": "lines"},
    },
    "grid": {
        "preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny", "vit_p_fmnist_p16_tiny", "vit_c_fmnist_p16_tiny"],
        "optimizer": REAL_SPEC["grid"]["optimizer"],
    },
    "sample": REAL_SPEC["sample"],
    "launch": {"cluster": "local", "parallel": 2, "timeout_min": 30, "max_retries": 1},
}

# Per notebook: tiny parameters (the root is filled in by the test), and the least number of
# plotly figures and of widgets (an explorer is one widget) its outputs must hold.
CASES = {
    "01_quickstart": (dict(TINY_TRAIN, n_images=3), 4, 0),
    "02_stability_sweeps": (
        {"spec": SWEEP_SPEC, "cluster": "local", "interval": 1, "wait": True, "timeout": 600},
        2,
        2,
    ),
    "03_training_length_and_optimizers": (
        {
            "epochs": [1, 2],
            "seeds": [0, 1, 2],
            "train_per_class": 10,
            "test_per_class": 10,
            "batch_size": 50,
            "cluster": "local",
            "timeout": 600,
        },
        2,
        0,
    ),
    "04_attention": (dict(TINY_TRAIN, n_images=2, distance_images=20), 4, 1),
    "05_filters_and_embeddings": (dict(TINY_TRAIN, n_images=2, n_components=8), 9, 1),
    "06_representations": (dict(TINY_TRAIN, n_images=2, cka_images=40, cka_batch=20, ig_steps=4), 5, 0),
    "07_cluster": ({"spec": "jobs/fmnist_peak.yaml"}, 0, 1),
    "08_see_like_cnns": (dict(TINY_TRAIN, cnn_epochs=1, fractions=[0.7], probe_images=40, probe_batch=20), 6, 0),
    "09_where_the_stem_matters": (
        {"spec": REGIME_SPEC, "cluster": "local", "timeout": 900, "resamples": 200, "power_sims": 20},
        1,
        0,
    ),
}


def tiny_runs(root: Path) -> dict[str, Path]:
    """The two runs notebooks 01/04/05/06 train with TINY_TRAIN under `root` ({preset: run_dir}),
    trained here when missing: the same overrides as the notebooks' training cell, so they are shared."""
    from analysis.runs import ensure_trained

    overrides = {
        "train.epochs": TINY_TRAIN["epochs"],
        "data.train_per_class": TINY_TRAIN["train_per_class"],
        "data.test_per_class": TINY_TRAIN["test_per_class"],
        "train.progress": "none",
    }
    return ensure_trained(("vit_p_fmnist_tiny", "vit_c_fmnist_tiny"), root=root, overrides=overrides)


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="session")
def notebook_root(tmp_path_factory) -> Path:
    """One folder for the runs and sweeps of every notebook in the session (reused when complete)."""
    root = tmp_path_factory.getbasetemp() / "notebook_runs"
    root.mkdir(exist_ok=True)
    return root


def mimes(nb) -> list[str]:
    """Every output mime type of every code cell."""
    return [m for c in nb.cells if c.cell_type == "code" for o in c.outputs for m in o.get("data", {})]


def test_every_notebook_has_a_case():
    names = [p.stem for p in notebook_paths()]
    assert names == sorted(CASES), "add tiny parameters for each notebook to CASES"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_is_clean_and_parametrized(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "start with a title"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "root = " in code[0].source, "the parameters name a root folder"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {i} holds outputs; clear them"
    # every tiny parameter of the test names a real parameter of the notebook
    params, _, _ = CASES[path.stem]
    defined = {line.split("=")[0].strip() for line in code[0].source.splitlines() if "=" in line}
    assert set(params) <= defined, f"unknown parameters {set(params) - defined}"


@pytest.mark.slow
@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs(path, notebook_root, notebook_kernel, tmp_path):
    params, min_plots, min_widgets = CASES[path.stem]
    params = dict(params, root=str(notebook_root))
    nb = execute_notebook(path, params, cwd=tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    found = mimes(nb)
    assert found.count(PLOTLY) >= min_plots, json.dumps(found)
    assert found.count(WIDGET) >= min_widgets, json.dumps(found)
    assert silent_long_cells(nb) == [], "cells that ran long without printing progress"


LONG = 20.0  # seconds a cell may run (with the tiny parameters) without a progress bar or printed lines;
# a cell of ~5 s on a quiet machine takes over 10 s on a loaded CI machine, while the cells this catches ran minutes


def silent_long_cells(nb) -> list[tuple[str, float]]:
    """(cell id, seconds) of the code cells that ran longer than LONG without a tqdm bar (a widget
    output) or printed lines (a stream output)."""
    silent = []
    for cell in nb.cells:
        seconds = cell.metadata.get("papermill", {}).get("duration") or 0.0
        shown = {o.output_type for o in cell.get("outputs", [])} | set(mimes(nbformat.v4.new_notebook(cells=[cell])))
        if cell.cell_type == "code" and seconds > LONG and not shown & {"stream", WIDGET}:
            silent.append((cell.id, round(seconds, 1)))
    return silent


def test_relative_roots_resolve_from_the_notebook_folder(tmp_path):
    from analysis.paths import notebook_base, resolve_root

    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    assert notebook_base(tmp_path / "repo" / "notebooks") == tmp_path / "repo"  # the repository holding it
    assert resolve_root("sweeps", tmp_path / "repo" / "notebooks") == tmp_path / "repo" / "sweeps"
    alone = tmp_path / "alone"
    alone.mkdir()
    assert resolve_root("runs/x", alone) == alone / "runs/x"  # no repository: the folder itself
    assert resolve_root(tmp_path / "abs", alone) == tmp_path / "abs"


@pytest.mark.slow
def test_notebook_run_from_another_folder_writes_under_that_folder(notebook_kernel, tmp_path):
    """07 with its default relative root, run by papermill in a folder outside any repository: its
    sweep folder is written there, not into the checkout the package comes from."""
    (tmp_path / "work").mkdir()
    in_checkout = REPO / "sweeps" / "fmnist_peak"
    before = in_checkout.stat().st_mtime_ns if in_checkout.exists() else None
    execute_notebook(NOTEBOOKS / "07_cluster.ipynb", {"spec": "jobs/fmnist_peak.yaml"}, cwd=tmp_path / "work")
    assert (tmp_path / "work" / "sweeps" / "fmnist_peak" / "runs.csv").exists()
    assert (in_checkout.stat().st_mtime_ns if in_checkout.exists() else None) == before
