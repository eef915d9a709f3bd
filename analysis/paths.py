"""Where a notebook's relative paths point.

Jupyter and papermill start a notebook's kernel in a working directory (the notebook's folder by
default). Relative roots resolve from the repository holding that directory (the nearest folder at
or above it with a `.git` or a `pyproject.toml`), else from the directory itself, so a notebook
writes beside itself, never into the checkout the installed package happens to come from.
"""

from __future__ import annotations

from pathlib import Path

MARKERS = (".git", "pyproject.toml")  # what marks a repository's top folder


def notebook_base(cwd: str | Path | None = None) -> Path:
    """The folder relative roots resolve from: the repository holding `cwd` (default: the working
    directory), else `cwd` itself."""
    here = Path(cwd or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if any((d / m).exists() for m in MARKERS)), here)


def resolve_root(root: str | Path, cwd: str | Path | None = None) -> Path:
    """`root` itself when absolute, else under notebook_base(cwd)."""
    root = Path(root).expanduser()
    return root if root.is_absolute() else notebook_base(cwd) / root
