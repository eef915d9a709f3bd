"""Sweep specs: a base run config, grids and samplers, expanded into run configs.

A spec is a mapping (YAML file or a dict in a cell):

    name: fmnist_demo            # the sweep folder's name under the root
    base: {model: {preset: vit_c_fmnist_tiny}, train: {epochs: 5}}   # a run config (sections or dotted keys)
    grid:                        # cartesian product, in this order
      preset: [vit_p_fmnist_tiny, vit_c_fmnist_tiny]     # aliases: preset, stem, optimizer, epochs
      optimizer:                 # a list of cases: each case is a dict of dotted keys (values or samplers)
        - {optim.name: adamw, optim.lr: {log_uniform: [2.5e-4, 8e-3]}}
        - {optim.name: sgd, optim.lr: {log_uniform: [0.1, 3.2]}}
    sample:                      # samplers applied to every grid cell
      optim.weight_decay: {log_uniform: [0.02, 0.8], step: 0.01}
    samples: 8                   # draws per grid cell (1 when nothing is sampled)
    seed: 0                      # sampling seed
    launch: {cluster: local, parallel: 1, timeout_min: 60}   # see analysis.sweeps.options.LaunchConfig

Samplers: {log_uniform: [low, high]}, {uniform: [low, high]} (closed ranges) and {choice: [a, b, ...]},
each with an optional quantization `step` (values are rounded to multiples of it, within the range).
Sampling is deterministic from the seed; duplicate configs are dropped. Numbers take every spelling
Python's float() accepts (`log_uniform: [1e-4, 1e-3]` from a YAML file arrives as strings and is read
as numbers), in bounds, steps, values and launch options alike (see analysis.config.parse_number).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis import config as C
from analysis.errors import ConfigError, one_of, shown
from analysis.sweeps.options import LaunchConfig
from analysis.trust import load_yaml

ALIASES = {"preset": "model.preset", "stem": "model.stem", "optimizer": "optim.name", "epochs": "train.epochs"}
SPEC_KEYS = ("name", "base", "grid", "sample", "samples", "seed", "launch", "description")
SAMPLERS = ("log_uniform", "uniform", "choice")
MAX_RUNS = 10_000  # runs one spec may expand to; the environment variable below overrides it
MAX_RUNS_ENV = "STEMLAB_MAX_RUNS"


def max_runs() -> int:
    """The cap on the runs of one spec: $STEMLAB_MAX_RUNS when set (a positive integer), else MAX_RUNS."""
    value = os.environ.get(MAX_RUNS_ENV)
    if value is None:
        return MAX_RUNS
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(f"{MAX_RUNS_ENV} must be a positive integer, got {shown(value)}")
    return int(value)


def _key(key: str, where: str) -> str:
    """Resolve an alias and check that a dotted key names a run config key (analysis.config.config_key)."""
    key = ALIASES.get(key, key)
    C.config_key(key, f"{where}: {key}", tuple(ALIASES))
    return key


@dataclass(frozen=True)
class Sampler:
    """One hyperparameter distribution over a closed range (or a set), with optional quantization."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()
    step: float | None = None

    @classmethod
    def parse(cls, key: str, d: dict, where: str) -> "Sampler":
        """Build a sampler from {kind: [low, high] | [values], step: q}; raise a one-line ConfigError."""
        kinds = [k for k in d if k != "step"]
        extra = [k for k in kinds if k not in SAMPLERS]
        if extra or len(kinds) != 1:
            raise one_of(f"sampler for {key} in {where}", (extra or kinds or ["(none)"])[0], SAMPLERS)
        kind = kinds[0]
        arg, step = d[kind], d.get("step")
        if step is not None:
            step = C.parse_number(step, "float", f"{where}: {key} step")
            if step <= 0:
                raise ConfigError(f"{where}: {key} step must be a number > 0, got {shown(d['step'])}")
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: {key} choice needs a non-empty list of values, got {shown(arg)}")
            return cls(key, kind, values=tuple(C.coerce(key, v) for v in arg), step=step)
        if not isinstance(arg, list) or len(arg) != 2:
            raise ConfigError(f"{where}: {key} {kind} needs [low, high] (two numbers), got {shown(arg)}")
        low, high = (C.parse_number(v, "float", f"{where}: {key} {kind} bound") for v in arg)
        if not low <= high:
            raise ConfigError(f"{where}: {key} {kind} range [{arg[0]}, {arg[1]}] is empty (low > high)")
        if kind == "log_uniform" and low <= 0:
            raise ConfigError(f"{where}: {key} log_uniform needs positive bounds, got [{arg[0]}, {arg[1]}]")
        s = cls(key, kind, low, high, step=step)
        if step is not None and s._grid_bounds() is None:
            raise ConfigError(f"{where}: {key} range [{arg[0]}, {arg[1]}] holds no multiple of step {step}")
        return s

    def _grid_bounds(self) -> tuple[float, float] | None:
        lo, hi = math.ceil(self.low / self.step - 1e-9), math.floor(self.high / self.step + 1e-9)
        return (lo, hi) if lo <= hi else None

    def draw(self, rng: np.random.Generator) -> Any:
        """Return one value (floats rounded to 12 significant digits so duplicates compare equal)."""
        if self.kind == "choice":
            value = self.values[int(rng.integers(len(self.values)))]
            if self.step is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = round(value / self.step) * self.step
            return _tidy(value)
        if self.kind == "log_uniform":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.step is not None:
            lo, hi = self._grid_bounds()
            value = min(max(round(value / self.step), lo), hi) * self.step
        return _tidy(value)


def _tidy(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value


def _is_sampler(value: Any) -> bool:
    return isinstance(value, dict)


def _put(mapping: dict, key: str, value, where: str, how: str) -> None:
    """mapping[key] = value, refusing (one line) a key given twice in one place of a spec."""
    if key in mapping:
        raise ConfigError(f"{where}: {key} is given twice ({how}); give it once")
    mapping[key] = value


def _flatten_base(base: Any) -> dict[str, Any]:
    """Base config as dotted keys; accepts nested sections, dotted keys or a mix."""
    if base is None:
        return {}
    if not isinstance(base, dict):
        raise ConfigError(f"spec base must be a mapping (a run config), got {type(base).__name__}")
    out = {}
    how = "nested and dotted, or by an alias"  # `optim: {lr: ..}` and `optim.lr: ..`
    for k, v in base.items():
        if isinstance(v, dict) and "." not in k and k not in ALIASES:
            for kk, vv in v.items():
                _put(out, _key(f"{k}.{kk}", "base"), vv, "base", how)
        else:
            _put(out, _key(k, "base"), v, "base", how)
    return out


@dataclass
class Spec:
    """A validated sweep spec; `runs()` expands it into run rows."""

    name: str
    base: dict[str, Any]
    axes: list[tuple[str, list[dict[str, Any]]]]  # (axis name, cases of dotted overrides / samplers)
    sample: dict[str, Sampler]
    samples: int
    seed: int
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    raw: dict = field(default_factory=dict)
    dropped: int = 0  # duplicate configs dropped by the last runs()

    @classmethod
    def from_dict(cls, d: dict, name: str | None = None) -> "Spec":
        """Validate a spec mapping; every problem is a one-line ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"a sweep spec must be a mapping with keys {', '.join(SPEC_KEYS)}")
        for k in d:
            if k not in SPEC_KEYS:
                raise one_of("sweep spec key", k, SPEC_KEYS)
        name = str(d.get("name") or name or "sweep")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"sweep name {shown(name)} must use letters, digits, '-', '_' or '.' only")
        base = _flatten_base(d.get("base"))
        for k, v in base.items():
            if _is_sampler(v):
                raise ConfigError(f"base: {k} is a sampler; put samplers under 'sample' or in grid cases")
        axes = []
        grid = d.get("grid") or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"spec grid must be a mapping of axis -> list, got {type(grid).__name__}")
        for axis, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid axis {shown(axis)} needs a non-empty list of values, got {shown(values)}")
            cases = []
            for v in values:
                if isinstance(v, dict):
                    case = {}
                    for k, vv in v.items():
                        kk = _key(k, f"grid {axis}")
                        value = Sampler.parse(kk, vv, f"grid {axis}") if _is_sampler(vv) else vv
                        _put(case, kk, value, f"grid {axis}", "in one case, by an alias")
                    cases.append(case)
                else:
                    cases.append({_key(axis, "grid"): v})
            for other, other_cases in axes:
                twice = {k for c in cases for k in c} & {k for c in other_cases for k in c}
                if twice:
                    raise ConfigError(
                        f"grid axes {shown(other)} and {shown(axis)} both set {sorted(twice)[0]}; one key, one axis"
                    )
            axes.append((str(axis), cases))
        sample = {}
        if not isinstance(d.get("sample") or {}, dict):
            raise ConfigError(f"spec sample must be a mapping of key -> sampler, got {shown(d.get('sample'))}")
        for k, v in (d.get("sample") or {}).items():
            kk = _key(k, "sample")
            if not _is_sampler(v):
                raise ConfigError(f"sample: {kk} must be a sampler like {{log_uniform: [low, high]}}, got {shown(v)}")
            _put(sample, kk, Sampler.parse(kk, v, "sample"), "sample", "by an alias")
        samples, seed = d.get("samples", 1), d.get("seed", 0)
        for what, v, lo in (("samples", samples, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"spec {what} must be an integer >= {lo}, got {shown(v)}")
        launch = d.get("launch") or {}
        if not isinstance(launch, dict):
            raise ConfigError(f"spec launch must be a mapping of launch options, got {shown(launch)}")
        spec = cls(name, base, axes, sample, samples, seed, LaunchConfig.from_dict(launch), raw=copy.deepcopy(d))
        spec.count()  # counted before anything is built
        spec.runs()  # every expanded config validates before anything is written or launched
        return spec

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Spec":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep spec not found: {path}")
        return cls.from_dict(load_yaml(path), name=path.stem)

    def count(self) -> int:
        """The number of runs the spec expands to (before duplicates are dropped), computed without
        building any; over max_runs() a one-line ConfigError."""
        cap = max_runs()
        cells = math.prod(len(cases) for _, cases in self.axes)
        if cells > cap:
            raise ConfigError(
                f"spec {self.name!r} expands to {cells} grid cells, over the limit of {cap} runs "
                f"(set {MAX_RUNS_ENV} to allow more)"
            )
        total = 0
        for cell in itertools.product(*[cases for _, cases in self.axes]) if self.axes else [()]:
            sampled = set(self.sample)
            for case in cell:
                for k, v in case.items():
                    (sampled.add if isinstance(v, Sampler) else sampled.discard)(k)
            total += self.samples if sampled else 1
            if total > cap:
                raise ConfigError(
                    f"spec {self.name!r} expands to over {cap} runs (grid {cells} cells x samples "
                    f"{self.samples}), the limit; set {MAX_RUNS_ENV} to allow more"
                )
        return total

    def runs(self) -> list[dict]:
        """Expand grid x samples into run rows: {"run", "overrides", "sampled", "cfg"}, duplicates dropped."""
        from analysis.models import PRESETS
        from analysis.models.registry import portable_stem

        rng = np.random.default_rng(self.seed)
        cells = itertools.product(*[cases for _, cases in self.axes]) if self.axes else [()]
        rows, seen = [], set()
        self.dropped = 0
        for cell in cells:
            fixed, samplers = dict(self.base), dict(self.sample)
            for case in cell:
                for k, v in case.items():
                    if isinstance(v, Sampler):
                        samplers[k] = v
                    else:
                        fixed[k] = v
                        samplers.pop(k, None)
            n = self.samples if samplers else 1
            for _ in range(n):
                drawn = {k: samplers[k].draw(rng) for k in sorted(samplers)}
                overrides = {k: C.coerce(k, v) for k, v in {**fixed, **drawn}.items()}  # typed: "1e-3" -> 0.001
                cfg = C.RunConfig().replace(overrides)
                if cfg.model.preset not in PRESETS:
                    raise one_of("model.preset", cfg.model.preset, list(PRESETS))
                if cfg.model.stem is not None:  # jobs build it in another process: it must be importable there
                    portable_stem(cfg.model.stem)
                key = tuple(sorted((k, repr(v)) for k, v in cfg.flat().items()))
                if key in seen:
                    self.dropped += 1
                    continue
                seen.add(key)
                rows.append({"overrides": overrides, "sampled": sorted(drawn), "cfg": cfg})
        unusual = sorted({u.split("=")[0]: u for r in rows for u in r["cfg"].unusual()}.values())
        if unusual:
            warnings.warn(f"spec {self.name!r}: far outside the usual range: {'; '.join(unusual)}", stacklevel=2)
        varies = _varying(rows)
        for i, row in enumerate(rows):
            row["run"] = run_id(i, row["cfg"], varies)
        return rows


def _varying(rows: list[dict]) -> set[str]:
    keys = ("model.stem", "train.epochs", "train.seed", "data.name")
    return {k for k in keys if len({r["cfg"].flat()[k] for r in rows}) > 1}


def run_id(i: int, cfg: C.RunConfig, varies: set[str] = frozenset()) -> str:
    """Short readable run id, e.g. "0007-vit_c_fmnist_tiny-sgd" (+ stem/epochs/seed/data when they vary)."""
    parts = [f"{i:04d}", cfg.model.preset, cfg.optim.name]
    if "model.stem" in varies and cfg.model.stem:
        parts.append(cfg.model.stem.split(":")[-1])  # an import path's attribute: no ':' in folder names
    if "train.epochs" in varies:
        parts.append(f"e{cfg.train.epochs}")
    if "train.seed" in varies:
        parts.append(f"s{cfg.train.seed}")
    if "data.name" in varies:
        parts.append(cfg.data.name)
    return "-".join(parts)
