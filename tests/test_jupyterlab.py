"""The user's view: notebooks opened in a real JupyterLab (headless Chromium), all cells run.

Each notebook gets its tiny test parameters written in (papermill's injected-parameters cell)
and runs on the session's shared runs. Screenshots go to artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from tests.test_notebooks import CASES, NOTEBOOKS, notebook_root  # noqa: F401 (a fixture)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def with_parameters(name: str, folder: Path, root: Path) -> Path:
    """Write notebooks/<name>.ipynb with its tiny parameters injected into `folder`; return the copy."""
    params, _, _ = CASES[name]
    nb = load_notebook_node(str(NOTEBOOKS / f"{name}.ipynb"))
    nb = parameterize_notebook(nb, dict(params, root=str(root)))
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("name, min_plots, min_sliders", [("01_quickstart", 4, 0), ("04_attention", 5, 2),
                                                          ("08_see_like_cnns", 6, 0)])
def test_notebook_renders_in_jupyterlab(name, min_plots, min_sliders, notebook_root, tmp_path):  # noqa: F811
    from tests.browser import run_notebook_in_jupyterlab

    shot = ARTIFACTS / f"notebook_{name}.png"
    shot.unlink(missing_ok=True)
    result = run_notebook_in_jupyterlab(with_parameters(name, tmp_path, notebook_root), shot, timeout=420)
    assert result["errors"] == []
    assert result["executed"] == result["cells"]
    assert result["plots"] >= min_plots
    assert result["sliders"] >= min_sliders
    if min_sliders:
        assert result["widgets"] >= 1
    assert shot.stat().st_size > 20_000
