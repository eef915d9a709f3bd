"""Typed run configs: defaults, YAML in/out, dotted overrides, validation with one-line errors.

A run config has four sections. Every key is listed here with its meaning; `RunConfig()` is the
short small-data recipe (Fashion-MNIST, ViT_C tiny, AdamW).

Numbers, in overrides (`optim.lr=1e-3`), YAML files and sweep specs alike, take every spelling
Python's float() accepts: `1e-3`, `5E-2`, `1e4`, `.5`, `1_000` (YAML 1.1 alone reads `1e-3` as a
string). Integer keys take whole numbers in any of these spellings (`train.epochs=1e1` is 10,
`10.0` is 10) and refuse fractions (`2.5`). nan and inf are refused everywhere. `null`, `none`,
`~` or an empty value set an optional key to None.

`typed` parses one value to a dataclass field's type hint and `typed_fields` a mapping of them: the run
config's sections here and the launch options (analysis.sweeps.options) both go through them, so YAML,
`section.key=value` overrides and `--set launch.KEY=VALUE` read values the same way.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from analysis.errors import ConfigError, one_of, shown

OPTIMIZERS = ("adamw", "sgd")
DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagefolder")
AUGMENTS = ("none", "crop_flip", "autoaugment", "randaugment")
PRECISIONS = ("auto", "bf16", "fp32")
PROGRESS = ("auto", "bar", "lines", "none")
DEVICES = ("auto", "cpu", "cuda")


# Keys that change how a run is executed or shown, not what it computes: a run folder may be resumed
# (or reused) with other values of these.
RUNTIME_KEYS = ("train.precision", "train.progress", "train.threads", "train.checkpoint_minutes", "train.tensorboard")


@dataclass
class ModelConfig:
    preset: str = "vit_c_fmnist_tiny"  # a name from analysis.models.PRESETS
    stem: str | None = None  # override the preset's stem: a registered name or module.path:callable; None keeps it
    local_mlp: bool | None = None  # LocalViT depthwise-conv MLP; None keeps the preset's choice
    fused_attn: bool = True  # scaled_dot_product_attention; False = explicit path (attention readable)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # one of DATASETS
    root: str | None = None  # dataset folder; None = the dataset's default location
    train_per_class: int | None = None  # keep the first N training images of each class (None: all)
    test_per_class: int | None = None  # keep the first N test images of each class (None: all)
    augment: str = "crop_flip"  # one of AUGMENTS; auto/randaugment go through timm's transforms
    crop_padding: int = 2  # zero padding for the random crop (crop_flip), in native pixels (scaled on resize)
    hflip: bool = True  # random horizontal flips (crop_flip)
    img_size: int | None = None  # input side in pixels (arrays are resized on load); None takes the preset's
    workers: int = 4  # DataLoader workers (imagefolder and per-image augmentations)
    in_memory: bool = True  # small datasets: uint8 tensors on the device, batched augmentation


@dataclass
class OptimConfig:
    name: str = "adamw"  # one of OPTIMIZERS
    lr: float = 1.6e-2  # peak lr for a batch of ref_batch; the run uses lr * batch_size / ref_batch
    ref_batch: int = 2048  # the batch size lr is stated for (the paper states lrs for 2048)
    weight_decay: float = 0.05  # not applied to norms, biases, position embedding, class token
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD: Nesterov momentum
    beta1: float = 0.9  # AdamW betas
    beta2: float = 0.999
    warmup_epochs: float = 1.0  # linear warmup from 0, then half-period cosine to 0, per iteration
    clip_grad: float | None = None  # clip the global gradient norm to this value (None: off)


@dataclass
class TrainConfig:
    epochs: int = 5  # schedule length
    batch_size: int = 128
    eval_batch_size: int = 500
    eval_every: int = 1  # test every this many epochs and at the last (pycls's TRAIN.EVAL_PERIOD)
    seed: int = 0  # model init, data order, augmentation: a run is a function of its config
    label_smoothing: float = 0.0
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    ema_decay: float | None = None  # EMA of weights evaluated alongside (e.g. 0.9999); None: off
    precision: str = "auto"  # one of PRECISIONS; auto = bf16 where it measures faster, else fp32
    channels_last: bool = False  # channels_last memory format for the stem's convs
    device: str = "auto"  # one of DEVICES
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often (0: epoch ends only)
    progress: str = "auto"  # one of PROGRESS; auto = a bar on a terminal, log lines in batch jobs
    threads: int | None = None  # torch CPU threads (None: torch's default)
    tensorboard: bool = False  # also write TensorBoard event files to <run>/tensorboard (needs `tensorboard`)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Return the config as nested plain dicts."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Return {"section.key": value} for every key."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def unusual(self) -> list[str]:
        """The keys whose values lie far outside what the paper and timm use (a typo more often than a
        choice): each as "key=value (usual: ...)". Such values are allowed; callers warn about them."""
        out = []
        for key, value, high, usual in (
            ("optim.lr", self.optim.lr, 10.0, "up to about 3 at batch 2048"),
            ("optim.weight_decay", self.optim.weight_decay, 10.0, "up to about 1"),
            ("train.epochs", self.train.epochs, 10_000, "up to 400"),
            ("train.batch_size", self.train.batch_size, 100_000, "up to 4096"),
        ):
            if isinstance(value, (int, float)) and value > high:
                out.append(f"{key}={value:g} (usual: {usual})")
        return out

    def differences(self, other: "RunConfig") -> list[str]:
        """The keys (in config order) where this config and `other` differ, leaving out RUNTIME_KEYS
        (what a trainer resolves, e.g. train.precision "auto" -> "fp32")."""
        mine, theirs = self.flat(), other.flat()
        return [k for k in mine if k not in RUNTIME_KEYS and mine[k] != theirs.get(k)]

    def effective_lr(self) -> float:
        """Peak lr for this run's batch size (linear scaling from ref_batch)."""
        return self.optim.lr * self.train.batch_size / self.optim.ref_batch

    def replace(self, overrides: dict[str, Any]) -> "RunConfig":
        """Return a copy with dotted-key overrides applied and validated."""
        d = self.to_dict()
        for key, value in overrides.items():
            section, name = config_key(key)
            d[section][name] = value
        return from_dict(d)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}


NULLS = ("", "null", "none", "~")  # null words: set an optional key to None (any case)


def parse_number(value: Any, kind: str, where: str) -> int | float:
    """A finite float (kind "float") or a whole number (kind "int") from a number or from a string in
    any spelling float() accepts; anything else is a one-line ConfigError naming `where`."""
    given, exact = value, None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be {kind}, got {shown(given)}") from None
        try:
            exact = decimal.Decimal(given.strip())  # exact digits, for long whole numbers
        except decimal.InvalidOperation:
            exact = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be {kind}, got {shown(given)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {shown(given)}")
    if kind == "float":
        return float(value)
    if isinstance(value, int):
        return value
    exact = exact if exact is not None and exact.is_finite() else decimal.Decimal(value)
    if exact != exact.to_integral_value():
        raise ConfigError(f"{where} must be int (a whole number), got {shown(given)}")
    return int(exact)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """{field name: its type hint, resolved} of dataclass `cls` (cached: read it, do not change it)."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in fields(cls)}


def typed_fields(cls: type, given: dict, what: str, prefix: str) -> dict[str, Any]:
    """The values of `given` typed to the fields of dataclass `cls` (see typed; errors name `prefix` + key).
    A key `cls` lacks is one line: "unknown <what> 'key'; allowed: <its fields>"."""
    known = hints(cls)
    out = {}
    for key, value in given.items():
        if key not in known:
            raise one_of(what, key, list(known))
        out[key] = typed(value, known[key], f"{prefix}{key}")
    return out


def config_key(key: str, where: str = "", also: tuple[str, ...] = ()) -> tuple[str, str]:
    """(section, name) of dotted run config key `key`; an unknown one is a one-line ConfigError
    (prefixed by `where`; `also`: other names the caller takes, listed as allowed)."""
    section, _, name = key.partition(".") if isinstance(key, str) else ("", "", "")
    if section not in SECTIONS or not name:
        error = one_of("config key", key, [*(f"{s}.<key>" for s in SECTIONS), *also])
    elif name not in hints(SECTIONS[section]):
        error = one_of(f"key in section {shown(section)}", name, list(hints(SECTIONS[section])))
    else:
        return section, name
    raise ConfigError(f"{where}: {error}") if where else error


def typed(value: Any, hint: Any, where: str) -> Any:
    """`value` (from YAML, Python or a command line) as type hint `hint`, or a one-line ConfigError
    naming `where`. A null word (NULLS) or None sets an optional key to None; numbers are read by
    parse_number; text for a bool or a mapping is read as YAML (true/false/yes/no/on/off, {key: value});
    text for a Literal matches its options in any case; text for a plain str stays as it is."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, str) and hint is not str and value.strip().lower() in NULLS:
        value = None
    if value is None:
        if type(None) in members:
            return None
        raise ConfigError(f"{where} may not be null (expected {_name(hint)})")
    options = [o for m in members if typing.get_origin(m) is Literal for o in typing.get_args(m)]
    others = [m for m in members if typing.get_origin(m) is not Literal and m is not type(None)]
    if options and (isinstance(value, str) or not others):
        for option in options:
            if value == option or (isinstance(value, str) and value.strip().lower() == str(option).lower()):
                return option
        if not others:
            raise one_of(where, value, options)
    if len(others) != 1:
        raise TypeError(f"{where}: no parser for type {hint}")
    return _scalar(value, others[0], where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    """`value` as one plain type: int, float, bool, str or dict."""
    if hint in (int, float):
        return parse_number(value, hint.__name__, where)
    kind = typing.get_origin(hint) or hint
    if kind not in (bool, str, dict):
        raise TypeError(f"{where}: no parser for type {hint}")
    example = ", e.g. {key: value}" if kind is dict else ""
    if isinstance(value, str) and kind is not str:
        value = _from_text(value, f"{where} must be {kind.__name__}{example}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {kind.__name__}{example}, got {shown(value)}")
    return value


def _from_text(text: str, expected: str) -> Any:
    """A YAML scalar or flow collection given as text; aliases are refused (they could
    expand without bound), as is anything not YAML (one line: `expected`, got `text`)."""
    bad = ConfigError(f"{expected}, got {shown(text)}")
    try:
        if any(isinstance(t, yaml.AliasToken) for t in yaml.scan(text)):
            raise bad
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise bad from None


def _name(hint: Any) -> str:
    """A type hint as a message says it: "int", "int or 'auto'"."""
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_name(m) for m in typing.get_args(hint) if m is not type(None))
    return getattr(hint, "__name__", str(hint))


def coerce(key: str, value: Any) -> Any:
    """The value of dotted config key `key` ("optim.lr") as its type, checked like an override."""
    section, name = config_key(key)
    return typed(value, hints(SECTIONS[section])[name], key)


def from_dict(d: dict) -> RunConfig:
    """Build and validate a RunConfig from nested dicts; missing keys take their defaults."""
    if not isinstance(d, dict):
        raise ConfigError(f"a run config must be a mapping of sections {list(SECTIONS)}, got {type(d).__name__}")
    for section in d:
        if section not in SECTIONS:
            raise one_of("config section", section, list(SECTIONS))
    built = {}
    for section, cls in SECTIONS.items():
        given = d.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"config section {shown(section)} must be a mapping, got {shown(given)}")
        built[section] = cls(**typed_fields(cls, given, f"key in section {shown(section)}", f"{section}."))
    cfg = RunConfig(**built)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError naming the first bad value and what is allowed."""
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_optional(cfg)
    if (cfg.train.mixup or cfg.train.cutmix) and cfg.train.batch_size % 2:
        raise ConfigError(f"mixup/CutMix need an even train.batch_size, got {cfg.train.batch_size}")
    if cfg.data.root is not None and (
        len(cfg.data.root.encode()) > 4095 or any(len(part.encode()) > 255 for part in Path(cfg.data.root).parts)
    ):
        raise ConfigError(
            f"data.root is longer than a file system allows (a name over 255 bytes or a path over "
            f"4095): {cfg.data.root[:60]}..."
        )
    if cfg.model.stem is not None:  # the form only; an import path is imported when the model is built
        from analysis.models.registry import check_stem_name

        check_stem_name(cfg.model.stem)


def _check_choices(cfg: RunConfig) -> None:
    """The keys that take one of a few names."""
    choices = [
        ("data.name", cfg.data.name, DATASETS),
        ("data.augment", cfg.data.augment, AUGMENTS),
        ("optim.name", cfg.optim.name, OPTIMIZERS),
        ("train.precision", cfg.train.precision, PRECISIONS),
        ("train.progress", cfg.train.progress, PROGRESS),
        ("train.device", cfg.train.device, DEVICES),
    ]
    for what, value, allowed in choices:
        if value not in allowed:
            raise one_of(what, value, allowed)


def _check_ranges(cfg: RunConfig) -> None:
    """The numbers that must be positive, non-negative or in [0, 1)."""
    positive = {
        "optim.lr": cfg.optim.lr,
        "optim.ref_batch": cfg.optim.ref_batch,
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "train.eval_every": cfg.train.eval_every,
    }
    for what, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{what} must be > 0, got {value}")
    non_negative = {
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.warmup_epochs": cfg.optim.warmup_epochs,
        "train.mixup": cfg.train.mixup,
        "train.cutmix": cfg.train.cutmix,
        "train.checkpoint_minutes": cfg.train.checkpoint_minutes,
        "data.crop_padding": cfg.data.crop_padding,
        "data.workers": cfg.data.workers,
    }
    for what, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{what} must be >= 0, got {value}")
    for what, value in {
        "train.label_smoothing": cfg.train.label_smoothing,
        "optim.momentum": cfg.optim.momentum,
        "optim.beta1": cfg.optim.beta1,
        "optim.beta2": cfg.optim.beta2,
    }.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{what} must be in [0, 1), got {value}")


def _check_optional(cfg: RunConfig) -> None:
    """The numbers that may be null (off, or all)."""
    if cfg.train.ema_decay is not None and not 0 < cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in (0, 1) or null, got {cfg.train.ema_decay}")
    if cfg.optim.clip_grad is not None and cfg.optim.clip_grad <= 0:
        raise ConfigError(f"optim.clip_grad must be > 0 or null, got {cfg.optim.clip_grad}")
    for what, value in {
        "data.train_per_class": cfg.data.train_per_class,
        "data.test_per_class": cfg.data.test_per_class,
    }.items():
        if value is not None and value < 1:
            raise ConfigError(f"{what} must be >= 1 or null, got {value}")


def load(path: str | Path) -> RunConfig:
    """Read a run config from YAML (safe loading, bounded: analysis.trust.load_yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    from analysis.trust import load_yaml  # size and alias limits

    return from_dict(load_yaml(path) or {})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse CLI overrides of the form section.key=value (values stay strings; `replace` parses them).
    A key given twice is refused."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"override {shown(item)} must look like section.key=value, e.g. optim.lr=1e-3")
        if key.strip() in out:
            raise ConfigError(
                f"override {key.strip()} is given twice ({shown(out[key.strip()])} and {shown(value)}); give it once"
            )
        out[key.strip()] = value
    return out
