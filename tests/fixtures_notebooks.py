"""Headless notebook execution for tests: papermill on the project's own Python kernel.

`execute_notebook` runs a notebook top to bottom and returns the executed node; a failing cell
raises `NotebookError` whose message names the notebook, the cell and the error line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_NAME = "python3"


class NotebookError(AssertionError):
    """A notebook cell raised; the message is one readable paragraph, the traceback is kept."""

    def __init__(self, message: str, traceback: str = ""):
        super().__init__(message)
        self.traceback = traceback


def project_python() -> Path:
    """Returns the interpreter of the project's virtual environment (.venv), else the running one."""
    venv = REPO / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def jupyter_env(python: Path | None = None) -> dict[str, str]:
    """Returns os.environ plus what makes Jupyter prefer the environment's own kernelspecs
    and lets notebooks `import analysis` from the repository."""
    python = python or project_python()
    env = dict(os.environ)
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("JUPYTER_PATH", None)
    return env


_SPEC_QUERY = """
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
try:
    spec = KernelSpecManager().get_kernel_spec(sys.argv[1])
    print(json.dumps({"argv": spec.argv, "dir": spec.resource_dir, "prefix": sys.prefix}))
except Exception:
    print(json.dumps(None))
"""


def _spec_is_own(python: Path, env: dict[str, str]) -> bool:
    """True when `python` resolves KERNEL_NAME to a spec that starts `python` itself."""
    out = subprocess.run(
        [str(python), "-c", _SPEC_QUERY, KERNEL_NAME],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = json.loads(out)
    if not found:
        return False
    exe = found["argv"][0]
    # jupyter_client replaces a bare "python"/"python3" with the server's own interpreter.
    if exe in {"python", "python3", f"python3.{sys.version_info.minor}"}:
        return Path(found["dir"]).resolve().is_relative_to(Path(found["prefix"]).resolve())
    return Path(exe).absolute() == python.absolute()


@functools.cache
def ensure_kernel(python: Path | None = None) -> str:
    """Returns the kernel name to run notebooks with, after making sure that name starts the
    project's Python (installs an ipykernel spec into the environment's prefix when missing)."""
    python = python or project_python()
    env = jupyter_env(python)
    if not _spec_is_own(python, env):
        subprocess.run(
            [str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        if not _spec_is_own(python, env):
            raise RuntimeError(f"kernel {KERNEL_NAME!r} does not start {python} even after installing it")
    return KERNEL_NAME


@contextlib.contextmanager
def _kernel_environ():
    """Within it, kernels started from this process see jupyter_env()'s variables."""
    saved = dict(os.environ)
    os.environ.update(jupyter_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def write_notebook(path: Path, sources: list[str], parameters: str | None = None) -> Path:
    """Writes a notebook of code cells (a first cell tagged "parameters" when given) and
    returns its path. The kernelspec metadata names the project's kernel."""
    cells = []
    if parameters is not None:
        cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(path)
    nbformat.write(nb, path)
    return path


def _original_index(cells: list, source: str, executed_index: int) -> int:
    """Returns the index in the unexecuted notebook of the cell papermill reported (papermill
    counts its injected-parameters cell); -1 when no code cell has that source."""
    matches = [i for i, c in enumerate(cells) if c.cell_type == "code" and c.source == source]
    return min(matches, key=lambda i: abs(i - executed_index)) if matches else -1


def execute_notebook(
    path: str | Path,
    parameters: dict | None = None,
    cwd: str | Path | None = None,
    output_path: str | Path | None = None,
    timeout: float = 600,
) -> nbformat.NotebookNode:
    """Executes `path` with papermill on the project's kernel, in `cwd` (default: the notebook's
    folder), writing to `output_path` when given. Returns the executed notebook node.
    Raises NotebookError naming the notebook, the failing cell (index, first source line) and
    the error line."""
    import papermill  # imported here: every test session loads this plugin, few run notebooks
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    kernel = ensure_kernel()
    try:
        with _kernel_environ():
            return papermill.execute_notebook(
                str(path),
                str(output_path) if output_path else None,
                parameters=parameters or {},
                kernel_name=kernel,
                cwd=str(cwd or path.parent),
                progress_bar=False,
                execution_timeout=timeout,
            )
    except PapermillExecutionError as exc:
        cells = nbformat.read(path, as_version=4).cells
        index = _original_index(cells, exc.source, exc.cell_index)
        first = next((line for line in exc.source.splitlines() if line.strip()), "")
        error = f"{exc.ename}: {exc.evalue}".splitlines()[0]
        message = f"notebook {path} failed at cell {index} ({first!r}): {error}"
        raise NotebookError(message, traceback=str(exc)) from None


@pytest.fixture(scope="session")
def notebook_kernel() -> str:
    """Returns the name of a kernel that runs the project's Python."""
    return ensure_kernel()


@pytest.fixture
def run_notebook(notebook_kernel, tmp_path):
    """Returns execute_notebook with cwd defaulting to the test's tmp_path."""

    def run(path: str | Path, parameters: dict | None = None, cwd: str | Path | None = None):
        return execute_notebook(path, parameters, cwd or tmp_path)

    return run
