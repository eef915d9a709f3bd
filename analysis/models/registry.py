"""The stem registry: the suite's stems and users' own, named in a run config.

    from analysis.models import register_stem

    @register_stem("my_stem")
    def my_stem(img_size, patch_size, in_chans, embed_dim, **kwargs) -> nn.Module:
        ...

    register_stem("my_stem_ln", norm="ln")(MyStem)   # a class, under a name, with bound arguments

The suite's stems (STEMS: patchify, conv, patchify_bn, conv_ln, cct) are the classes of
analysis.models.stems, registered at the end of this module by the same `register_stem`.

`model.stem` names a stem in one of two forms:
  my_stem                        a registered name (the suite's, or one registered in this process)
  mypackage.stems:my_stem        an import path module:attribute, imported where the run builds its
                                 model (sweep jobs included); the attribute may be registered or not

What a stem is (checked when the model is built; a miss is one line naming it):
  - a callable (function or class) taking keyword arguments: timm's embed_layer arguments
    img_size, patch_size, in_chans, embed_dim (and bias, dynamic_img_pad, device, dtype), plus the
    preset's conv-stem layout channels and strides; it receives those its signature names (all of
    them with **kwargs);
  - returning an nn.Module whose forward maps images (B, in_chans, H, W) to tokens (B, N, embed_dim);
  - with attributes stride (total stride in pixels = token pitch; must equal the preset's
    patch_size), grid_size ((gh, gw) tokens for img_size), num_patches (gh * gw), first_conv (its
    first nn.Conv2d: the filter and Grad-CAM probes read it) and kind (a short name for figures);
  - optionally init_weights(), called after timm's initialisation (without it the stem keeps
    timm's 'jax' initialisation), and timm's set_input_size / feat_ratio / dynamic_feat_size;
  - optionally, on the callable, total_stride(patch_size, strides) -> its stride before it is built
    (a static method of the class; lets a config's img_size be checked without building the stem).
  - register_stem(..., seq_pool=True) builds the ViT without class token, pooling by CCT's
    sequence pooling (as the `cct` stem does).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import shutil
import site
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from timm.layers import to_2tuple
from torch import nn

from analysis.errors import ConfigError
from analysis.models.stems import CCTStem, ConvStem, PatchifyStem

REQUIRED = ("stride", "grid_size", "num_patches", "first_conv", "kind")
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class StemEntry:
    """One stem: how to build it and what the ViT around it needs to know."""

    name: str  # registered name or import path
    build: Callable[..., nn.Module]
    seq_pool: bool = False  # no class token; CCT sequence pooling
    defaults: dict = field(default_factory=dict)  # keyword arguments bound at registration

    @property
    def builtin(self) -> bool:
        """Whether this is one of the suite's stems (registered whenever analysis.models is imported)."""
        return self.name in STEMS

    @property
    def stride(self) -> Optional[Callable[[int, Sequence[int]], int]]:
        """(patch_size, strides) -> the stem's stride, before building it; None when the stem does not say."""
        return getattr(self.build, "total_stride", None)

    def __call__(self, **kwargs) -> nn.Module:
        """Builds the stem from the arguments its signature takes, plus the registered defaults."""
        return self.build(**{**_accepted(self.build, kwargs), **self.defaults})


_REGISTRY: dict[str, StemEntry] = {}
STEMS: tuple[str, ...] = ()  # the suite's stem names, set once they are registered (end of this module)


def register_stem(name: str | Callable | None = None, *, seq_pool: bool = False, **defaults):
    """Decorator registering a stem factory (function or class) under `name` (default: its __name__).

    `defaults` are keyword arguments always passed to it (one class under several names, e.g.
    register_stem("conv_ln", norm="ln")(ConvStem)). Registering a name again replaces the earlier stem
    (a re-run notebook cell); the suite's stems cannot be replaced. Returns the factory unchanged.
    """

    def add(fn: Callable) -> Callable:
        key = name if isinstance(name, str) else getattr(fn, "__name__", None)
        if not callable(fn):
            raise ConfigError(f"register_stem needs a function or class, got {type(fn).__name__}")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", key):
            raise ConfigError(
                f"stem name {key!r} must start with a letter or '_' and use letters, digits, '_', '.', '-'"
            )
        if key in STEMS:
            raise ConfigError(f"stem name {key!r} is one of the suite's stems ({', '.join(STEMS)}); choose another")
        _REGISTRY[key] = StemEntry(key, fn, seq_pool=seq_pool, defaults=dict(defaults))
        return fn

    return add(name) if callable(name) and not isinstance(name, str) else add


def stem_names() -> list[str]:
    """The registered stem names: the suite's (STEMS) first, then those registered since."""
    return list(_REGISTRY)


def _unknown(name: str) -> ConfigError:
    return ConfigError(
        f"unknown stem {name!r}; allowed: {', '.join(_REGISTRY)}, or an import path module.path:callable"
    )


def check_stem_name(name: str) -> None:
    """Check the form of a model.stem value without importing anything: a registered name or
    module.path:attribute. Raises a one-line ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model.stem must be a stem name or module.path:callable, got {name!r}")
    if ":" in name:
        if not _IMPORT_PATH.match(name):
            raise ConfigError(f"stem import path {name!r} must look like mypackage.stems:my_stem")
    elif name not in _REGISTRY:
        raise _unknown(name)


def _import(path: str) -> object:
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"cannot import stem {path!r}: no module named {e.name!r} (install the package "
            f"or run from the folder that holds it)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any error inside the user's module, as one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"cannot import stem {path!r}: {type(e).__name__} in module {module_name}: {first}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(f"cannot import stem {path!r}: module {module_name} has no {attr!r}")
    if not callable(obj):
        raise ConfigError(f"stem {path!r} is a {type(obj).__name__}, not a function or class")
    return obj


def lookup_stem(name: str) -> StemEntry:
    """The StemEntry for a registered name or an import path (imported here); one-line ConfigError.
    Every model.stem value is resolved by this function, and only here."""
    check_stem_name(name)
    if ":" not in name:
        return _REGISTRY[name]
    obj = _import(name)
    registered = next((e for e in _REGISTRY.values() if e.build is obj and not e.defaults), None)
    return StemEntry(name, obj, seq_pool=registered.seq_pool if registered else False)


def portable_stem(name: str) -> None:
    """Check that a stem can be built in another process (a sweep job): a suite stem or an
    importable import path. A name registered only in this process is refused with one line."""
    entry = lookup_stem(name)
    if ":" in name:
        if name.split(":")[0] == "__main__":
            raise ConfigError(
                f"stem {name!r} lives in __main__ (a notebook or script); move it to a module "
                "and name it as module.path:callable so sweep jobs can import it"
            )
    elif not entry.builtin:
        module = getattr(entry.build, "__module__", None) or "its module"
        raise ConfigError(
            f"stem {name!r} is registered in this process only; sweep jobs cannot see it: "
            f"name it by import path, e.g. {module}:{getattr(entry.build, '__name__', name)}"
        )


def _accepted(fn: Callable, kwargs: dict) -> dict:
    """The keyword arguments fn's signature takes (all of them when it has **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def check_stem(stem: object, name: str, patch_size=None, img_size=None) -> None:
    """Check a built stem against the contract in this module's docstring; one-line ConfigError."""
    if not isinstance(stem, nn.Module):
        raise ConfigError(f"stem {name!r} returned a {type(stem).__name__}; it must return an nn.Module")
    missing = [a for a in REQUIRED if getattr(stem, a, None) is None]
    if missing:
        raise ConfigError(
            f"stem {name!r} lacks {', '.join(missing)}; a stem needs the attributes "
            f"{', '.join(REQUIRED)} (see analysis.models.registry)"
        )
    if not isinstance(stem.first_conv, nn.Conv2d):
        raise ConfigError(f"stem {name!r}: first_conv must be an nn.Conv2d, got {type(stem.first_conv).__name__}")
    stride = int(stem.stride)
    if patch_size is not None and stride != int(to_2tuple(patch_size)[0]):
        raise ConfigError(
            f"stem {name!r} has stride {stride}, the preset's patch_size is "
            f"{to_2tuple(patch_size)[0]}; allowed: a stem whose total stride equals patch_size"
        )
    grid = tuple(int(g) for g in stem.grid_size)
    if img_size is not None and grid != tuple(s // stride for s in to_2tuple(img_size)):
        raise ConfigError(
            f"stem {name!r} has grid_size {grid}; images of {tuple(to_2tuple(img_size))} at stride "
            f"{stride} give {tuple(s // stride for s in to_2tuple(img_size))}"
        )
    if int(stem.num_patches) != grid[0] * grid[1]:
        raise ConfigError(
            f"stem {name!r} has num_patches {stem.num_patches}, its grid {grid} holds {grid[0] * grid[1]}"
        )


def stem_layer(entry: StemEntry, channels: Sequence[int], strides: Sequence[int]) -> Callable[..., nn.Module]:
    """The embed_layer for timm's VisionTransformer: builds the stem of `entry` (see lookup_stem) and checks it."""

    def build(**kwargs) -> nn.Module:
        stem = entry(**kwargs, channels=list(channels), strides=list(strides))
        check_stem(stem, entry.name, kwargs.get("patch_size"), kwargs.get("img_size"))
        return stem

    return build


# The suite's stems, registered as a user registers theirs; their names, in this order, are STEMS.
register_stem("patchify")(PatchifyStem)
register_stem("conv")(ConvStem)
register_stem("patchify_bn", bn=True)(PatchifyStem)
register_stem("conv_ln", norm="ln")(ConvStem)
register_stem("cct", seq_pool=True)(CCTStem)
STEMS = tuple(_REGISTRY)


# -- sweep jobs import import-path stems from the launch's code snapshot ---------------------------


def _installed(path: Path) -> bool:
    """Whether a file lives in the environment's site-packages (an installed, not editable, package)."""
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    roots.add(site.getusersitepackages())
    path = path.resolve()
    return any(path.is_relative_to(Path(r).resolve()) for r in roots if r)


def _python_only(folder: str, names: list[str]) -> set[str]:
    """copytree filter: keep .py files and regular packages (folders with __init__.py)."""
    base = Path(folder)
    return {
        n
        for n in names
        if not ((base / n).is_file() and n.endswith(".py"))
        and not ((base / n).is_dir() and (base / n / "__init__.py").is_file() and not n.startswith("."))
    }


def snapshot_stem_code(dest: str | Path, stems: Iterable[Optional[str]]) -> list[Path]:
    """Copy the Python sources of the top-level package (or module) of every import-path stem in
    `stems` into dest, next to the `analysis` snapshot, so jobs build the stem as it was at launch.
    Packages installed in site-packages are left to the environment. Returns what was copied."""
    dest = Path(dest)
    copied = []
    for top in sorted({s.split(":")[0].split(".")[0] for s in stems if s and ":" in s} - {"analysis", "__main__"}):
        spec = importlib.util.find_spec(top)
        if spec is None:
            raise ConfigError(f"cannot find the module {top!r} of a stem import path to snapshot it")
        if spec.submodule_search_locations:  # a package (regular or namespace)
            source = Path(list(spec.submodule_search_locations)[0])
            target = dest / top
        else:
            source = Path(spec.origin)
            target = dest / source.name
        if _installed(source) or target.exists():
            continue
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, tmp, ignore=_python_only)
        else:
            shutil.copy2(source, tmp)
        tmp.rename(target)
        copied.append(target)
    return copied
