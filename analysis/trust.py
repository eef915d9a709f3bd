"""The rule for folders the suite reads: what a run or sweep folder holds is data, never code.

One place enforces it:
  - pickles (the CIFAR batches are pickles by their format) are read by `load_pickle`, whose
    unpickler admits only what that format holds: dicts, lists, bytes, strings and numpy arrays;
  - YAML from a folder is read by `load_yaml`: at most MAX_YAML_BYTES, aliases expanded to at most
    MAX_YAML_NODES nodes (no alias bomb);
  - `check_config` vets a config read from a folder: its data.root may not lie inside the folder being
    read, and a stem import path (`pkg.mod:fn`) is imported only with trust_code=True (CLI:
    --trust-code), and never from a module inside that folder;
  - `check_inside` keeps every path the suite writes under a sweep inside it (no symlink followed out).
Checkpoints are read with torch.load(weights_only=True) (analysis.rundir).
"""

from __future__ import annotations

import importlib.util
import io
import pickle
from pathlib import Path
from typing import Any

import yaml

from analysis.errors import ConfigError
from analysis.rundir.layout import RUN_TABLE, SPEC
from analysis.rundir.io import open_regular

MAX_YAML_BYTES = 1 << 20  # a run's config.yaml or a sweep's spec.yaml
MAX_YAML_NODES = 100_000  # YAML nodes after expanding aliases

# What the CIFAR python format (and numpy's array pickles, numpy 1 and 2) reference by name.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "bytes"),
    ("builtins", "str"),
    ("builtins", "bytearray"),
}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in _ALLOWED; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: str | Path) -> Any:
    """The object in a data pickle (dicts, lists, bytes, strings, numpy arrays only; python 2 pickles
    read with encoding="bytes"). Anything else is refused with a one-line ConfigError; nothing of the
    file is executed."""
    try:
        with open(path, "rb") as fh:
            return _DataUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{path}: refused, a data pickle may hold only dicts, lists, bytes, strings and numpy "
            f"arrays, this one names {e}"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise ConfigError(f"{path}: not a readable data pickle ({type(e).__name__})") from None


SCALAR_CHARS_PER_NODE = 256  # a scalar counts one node per 256 characters of its text


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Number of nodes of the document with every alias expanded, counted up to just past limit; a
    long scalar counts one node per SCALAR_CHARS_PER_NODE characters, so 99,000 aliases of one 600 KB
    string (some 59 GB once expanded) are over the limit like 99,000 aliases of a long list."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [x for pair in n.value for x in pair]
        else:
            children = []
        total = 1 + (len(n.value) // SCALAR_CHARS_PER_NODE if isinstance(n, yaml.ScalarNode) else 0)
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(n)] = total
        return total

    return size(node)


def _duplicate_key(loader: yaml.SafeLoader, node: yaml.Node) -> yaml.Node | None:
    """The first key given twice in one mapping of the document (YAML would keep the last silently);
    keys compare as the values they load as (`1` and `'1'` differ, `yes` and `true` do not)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if id(n) in seen or not isinstance(n, (yaml.SequenceNode, yaml.MappingNode)):
            continue
        seen.add(id(n))
        if isinstance(n, yaml.SequenceNode):
            todo.extend(n.value)
            continue
        keys = set()
        for key, value in n.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                value_of_key = loader.construct_object(key)
                loaded = (type(value_of_key).__name__, value_of_key)
                if loaded in keys:
                    return key
                keys.add(loaded)
            todo.append(value)
    return None


def load_yaml(path: str | Path, max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Safe-load one YAML file of at most max_bytes whose aliases expand to at most max_nodes nodes;
    a file over either limit, not YAML, or with a key given twice in a mapping is a one-line ConfigError."""
    path = Path(path)
    try:
        with open_regular(path, follow=True) as fh:  # a spec or config may be a link; never a FIFO or device
            raw = fh.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{path}: over {max_bytes} bytes, the limit for a YAML file of a run or sweep folder")
    loader = None
    try:
        loader = yaml.SafeLoader(io.BytesIO(raw))
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, max_nodes) > max_nodes:
            raise ConfigError(f"{path}: its aliases expand to over {max_nodes} YAML nodes (refused)")
        twice = _duplicate_key(loader, node)
        if twice is not None:
            raise ConfigError(
                f"{path}, line {twice.start_mark.line + 1}: key {twice.value!r} given twice in one mapping; give it once"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read as YAML") from None
    finally:
        if loader is not None:
            loader.dispose()


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether path lies in folder, as written (made absolute) or with its links resolved."""
    folder_abs, folder_real = Path(folder).absolute(), Path(folder).resolve()
    path = Path(path).expanduser()
    return any(p.is_relative_to(f) for p in (path.absolute(), path.resolve()) for f in (folder_abs, folder_real))


def folder_read(run_dir: str | Path) -> Path:
    """The folder being read when a run folder is read: the sweep holding it (the nearest folder
    above with spec.yaml and runs.json), else the run folder itself."""
    run_dir = Path(run_dir).absolute()
    for folder in (run_dir, *run_dir.parents):
        if (folder / SPEC).is_file() and (folder / RUN_TABLE).is_file():
            return folder
    return run_dir


def check_config(cfg, run_dir: str | Path) -> None:
    """Vet a config read from a run folder: its data.root may not lie inside the folder being read
    (the run folder, or the sweep holding it). One-line ConfigError."""
    folder = folder_read(run_dir)
    if cfg.data.root and is_inside(cfg.data.root, folder):
        raise ConfigError(
            f"{run_dir}: data.root {cfg.data.root} lies inside the folder being read ({folder}); "
            "a folder's config may not name data inside that folder: set data.root elsewhere"
        )


def check_stem(stem: str | None, run_dir: str | Path, trust_code: bool, named_by: str | None = None) -> None:
    """Allow a run folder's stem import path (`pkg.mod:fn`) to be imported only when trust_code is
    True, and never from a module inside the folder being read. Registered names pass; nothing is
    imported here but the packages above the stem's module once found outside the folder.
    `named_by`: the file that names the stem, for the message (default run_dir/config.yaml)."""
    if not stem or ":" not in stem:
        return
    folder = folder_read(run_dir)
    if not trust_code:
        raise ConfigError(
            f"refused to import stem {stem!r} named by {named_by or f'{run_dir}/config.yaml'}: code named "
            "by a folder runs only when allowed; pass trust_code=True (CLI: --trust-code) if you trust that code"
        )
    module = stem.split(":")[0].split(".")
    for i in range(1, len(module) + 1):
        name = ".".join(module[:i])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return  # not importable: the registry's import says so in one line
        if spec is None:
            return
        places = [spec.origin, *(spec.submodule_search_locations or [])]
        inside = next((p for p in places if p and p not in ("built-in", "frozen") and is_inside(p, folder)), None)
        if inside:
            raise ConfigError(
                f"refused to import stem {stem!r}: its module {name} lies inside the folder being "
                f"read ({folder}); code is never imported from a folder being read"
            )


def _link_on_the_way(root: Path, path: Path) -> Path | None:
    """The first symbolic link on the way from root down to path, if any."""
    current = root
    for part in path.relative_to(root).parts if path.is_relative_to(root) else path.parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def check_inside(root: str | Path, paths) -> None:
    """Raise a one-line ConfigError naming the link unless every path (written under root) resolves
    inside root: a symlinked run folder or file is never followed out of the sweep."""
    root = Path(root).absolute()
    real = root.resolve()
    for path in paths:
        path = Path(path).absolute()
        if not path.resolve().is_relative_to(real):
            link = _link_on_the_way(root, path) or path
            raise ConfigError(
                f"{link} is a symbolic link leading out of {root} (to {link.resolve()}); the suite "
                "writes only inside the sweep: replace the link by a folder or file"
            )
