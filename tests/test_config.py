"""Config values in every spelling a user types: overrides, YAML run configs, sweep specs, launch options."""

import math
import os
import re

import pytest
import yaml

from analysis import config
from analysis.errors import ConfigError
from analysis.sweeps import LaunchConfig, Spec, Sweep

SMALL = {"data": {"train_per_class": 30, "test_per_class": 10}, "train": {"epochs": 1, "batch_size": 50}}


@pytest.mark.parametrize(
    "key, text, value",
    [
        ("optim.lr", "1e-3", 1e-3),  # the example of `train --help`
        ("optim.lr", "5e-2", 5e-2),
        ("optim.lr", "5E-2", 5e-2),
        ("optim.weight_decay", "1e4", 1e4),
        ("optim.lr", "+1.5e-3", 1.5e-3),
        ("optim.lr", ".5", 0.5),
        ("optim.clip_grad", "1_000", 1000.0),
        ("optim.clip_grad", "null", None),
        ("train.ema_decay", "None", None),
        ("train.epochs", "10", 10),
        ("train.epochs", "1e1", 10),  # integer keys take whole numbers in any float spelling
        ("train.epochs", "10.0", 10),
        ("train.epochs", "010", 10),  # decimal, not YAML 1.1's octal 8
        ("data.train_per_class", "5_000", 5000),
        ("data.hflip", "false", False),
    ],
)
def test_numbers_in_any_float_spelling(key, text, value):
    cfg = config.RunConfig().replace(config.parse_overrides([f"{key}={text}"]))
    got = cfg.flat()[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "key, text, words",
    [
        ("optim.lr", "nan", "finite"),
        ("optim.lr", "inf", "finite"),
        ("optim.weight_decay", "-inf", "finite"),
        ("optim.weight_decay", "NaN", "finite"),
        ("optim.lr", "1e400", "finite"),
        ("optim.lr", "fast", "must be float"),
        ("train.epochs", "2.5", "whole number"),
        ("train.epochs", "1.5e0", "whole number"),
        ("train.epochs", "nan", "finite"),
        ("train.epochs", "1:30", "must be int"),  # YAML 1.1 would read 90
        ("train.epochs", "true", "must be int"),
    ],
)
def test_bad_numbers_are_one_line(key, text, words):
    with pytest.raises(ConfigError) as e:
        config.RunConfig().replace(config.parse_overrides([f"{key}={text}"]))
    assert key in str(e.value) and words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_non_finite_values_from_python_and_yaml_are_refused():
    for value in (math.nan, math.inf, ".nan", ".inf"):
        with pytest.raises(ConfigError, match="optim.weight_decay"):
            config.RunConfig().replace({"optim.weight_decay": value})
    with pytest.raises(ConfigError, match="whole number"):
        config.RunConfig().replace({"train.epochs": 2.5})
    assert config.RunConfig().replace({"train.epochs": 3.0}).train.epochs == 3


def test_yaml_run_config_with_scientific_notation(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: 1e-3, weight_decay: 5e-2, clip_grad: 1e0}\ntrain: {epochs: 1e1}\n")
    assert isinstance(yaml.safe_load(path.read_text())["optim"]["lr"], str)  # what YAML 1.1 gives
    cfg = config.load(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_grad, cfg.train.epochs) == (1e-3, 5e-2, 1.0, 10)
    (tmp_path / "back.yaml").write_text(cfg.to_yaml())
    assert config.load(tmp_path / "back.yaml") == cfg


SPEC_YAML = """
name: sci
base: {data: {train_per_class: 3e1, test_per_class: 1e1}, optim: {warmup_epochs: 5e-1}}
grid:
  optimizer:
    - {optim.name: adamw, optim.lr: {log_uniform: [1e-4, 1e-3]}}
    - {optim.name: sgd, optim.lr: {uniform: [5e-2, 2e-1], step: 5e-2}}
sample:
  optim.weight_decay: {choice: [1e-4, 5e-4, 1e-3]}
samples: 4
launch: {cluster: local, mem_gb: 1e1, timeout_min: 6e1}
"""


def test_spec_file_with_scientific_notation(tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text(SPEC_YAML)
    spec = Spec.from_yaml(path)
    runs = spec.runs()
    assert runs and spec.launch.to_dict() == {"cluster": "local", "timeout_min": 60, "mem_gb": 10.0}
    for r in runs:
        cfg = r["cfg"]
        assert cfg.data.train_per_class == 30 and cfg.optim.warmup_epochs == 0.5
        assert cfg.optim.weight_decay in (1e-4, 5e-4, 1e-3)
        if cfg.optim.name == "adamw":
            assert 1e-4 <= cfg.optim.lr <= 1e-3
        else:
            assert cfg.optim.lr in (0.05, 0.1, 0.15, 0.2)
        assert all(not isinstance(v, str) for k, v in r["overrides"].items() if k != "optim.name")
    sweep = Sweep.create(spec, root=tmp_path / "sweeps")
    assert sweep.launch_options() == LaunchConfig(cluster="local", mem_gb=10.0, timeout_min=60)
    reopened = Sweep.open(sweep.dir)  # the run table holds typed values
    assert [c.optim.lr for c in reopened.configs.values()] == [r["cfg"].optim.lr for r in runs]


@pytest.mark.parametrize(
    "sampler, words",
    [
        ({"log_uniform": ["1e-4", "nan"]}, "finite"),
        ({"uniform": [0, "inf"]}, "finite"),
        ({"uniform": [0, ".inf"]}, "must be float"),
        ({"log_uniform": ["1e-4", "big"]}, "must be float"),
        ({"uniform": [0.1, 0.2], "step": "nan"}, "finite"),
        ({"choice": ["1e-3", "nan"]}, "finite"),
    ],
)
def test_bad_sampler_numbers_are_one_line(tmp_path, sampler, words):
    spec = {"base": SMALL, "sample": {"optim.lr": sampler}}
    with pytest.raises(ConfigError) as e:
        Sweep.from_dict(spec, root=tmp_path)
    assert words in str(e.value) and "optim.lr" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not any(tmp_path.iterdir())


def test_launch_options_take_numbers_as_strings():
    opts = LaunchConfig.from_dict({"parallel": "2", "mem_gb": "1e2", "timeout_min": "6e1", "partition": "7"})
    assert opts == LaunchConfig(parallel=2, mem_gb=100.0, timeout_min=60, partition="7")
    for opts, words in (
        ({"parallel": "two"}, "parallel must be int"),
        ({"parallel": "1.5"}, "whole number"),
        ({"mem_gb": "nan"}, "finite"),
        ({"parallel": 0}, ">= 1"),
        ({"batch_runs": None}, "may not be null"),
        ({"array_parallelism": 2}, "unknown launch option 'array_parallelism'; allowed: cluster, parallel"),
    ):
        with pytest.raises(ConfigError, match=words):
            LaunchConfig.from_dict(opts)


def test_launch_options_mean_one_thing_on_both_back_ends():
    """parallel: jobs at once; runs_per_job: runs one job trains in turn. Locally, where every job
    starts at once, parallel splits the runs into that many jobs; both given must agree."""
    runs = list(range(10))
    assert LaunchConfig(parallel=4).jobs(runs, "local") == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert LaunchConfig(parallel=1).jobs(runs, "local") == [runs]
    assert LaunchConfig(parallel=4).jobs(runs, "slurm") == [[r] for r in runs]
    assert LaunchConfig(runs_per_job=4, parallel=3).jobs(runs, "local") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ConfigError, match="over parallel=1"):
        LaunchConfig(runs_per_job=1, parallel=1).jobs(runs, "local")
    assert LaunchConfig(runs_per_job=4, parallel=2).jobs(runs, "slurm")[2] == [8, 9]
    with pytest.raises(ConfigError, match="runs_per_job=4 makes 3 jobs of 10 runs, over parallel=2"):
        LaunchConfig(runs_per_job=4, parallel=2).jobs(runs, "local")
    params = LaunchConfig(parallel=16).executor_params("slurm", "demo")
    assert params["slurm_array_parallelism"] == 16 and params["name"] == "demo"
    assert "slurm_array_parallelism" not in LaunchConfig(parallel=16).executor_params("local", "demo")


def test_parallel_auto_runs_one_process_per_available_core_capped_by_the_run_count():
    """parallel: auto (and, locally, no value) is one job per core of this process's affinity mask,
    never more jobs than runs; a number still means that number; on SLURM auto sets no array limit."""
    cores = len(os.sched_getaffinity(0))
    many = list(range(cores * 3 + 1))
    for opts in (
        LaunchConfig.from_dict({"parallel": "auto"}),
        LaunchConfig(),
        LaunchConfig.from_dict({"parallel": "AUTO"}),
    ):
        assert opts.at_once("local") == cores
        jobs = opts.jobs(many, "local")
        assert len(jobs) == cores and sum(jobs, []) == many
        assert len(opts.jobs([0], "local")) == 1  # capped by the run count
        assert "slurm_array_parallelism" not in opts.executor_params("slurm", "x")
    assert len(LaunchConfig.from_dict({"parallel": "3"}).jobs(many, "local")) == min(3, len(many))
    assert LaunchConfig.from_dict({"parallel": "auto"}).to_dict() == {"parallel": "auto"}
    with pytest.raises(ConfigError, match="parallel must be"):
        LaunchConfig.from_dict({"parallel": "all"})


NULL_WORDS = [*config.NULLS, "NULL", " None ", "~ "]


@pytest.mark.parametrize("word", NULL_WORDS)
def test_one_set_of_null_words_for_run_configs_launch_options_and_set(word):
    """config.typed reads every value: overrides, YAML run configs, launch options and --set alike."""
    from analysis.__main__ import _launch_set

    cfg = config.RunConfig(data=config.DataConfig(root="/data"))
    cfg = cfg.replace({"optim.clip_grad": word, "data.root": word, "model.local_mlp": word})
    assert (cfg.optim.clip_grad, cfg.data.root, cfg.model.local_mlp) == (None, None, None)
    assert config.from_dict({"train": {"ema_decay": word}}).train.ema_decay is None
    opts = LaunchConfig.from_dict({"mem_gb": word, "partition": word, "parallel": word, "additional": word})
    assert opts == LaunchConfig()
    assert _launch_set([f"launch.mem_gb={word}", f"launch.partition={word}"]) == {"mem_gb": None, "partition": None}
    for refuse in (lambda: cfg.replace({"train.epochs": word}), lambda: LaunchConfig.from_dict({"batch_runs": word})):
        with pytest.raises(ConfigError, match="may not be null"):
            refuse()
    assert cfg.replace({"data.augment": "none"}).data.augment == "none"  # a text key that is not optional


def test_one_unknown_key_message_for_run_configs_launch_options_set_and_specs(tmp_path):
    from analysis.__main__ import _launch_set

    shape = r"unknown (config key|key in section 'optim'|launch option) '(nme|optim\.nme|bogus\.nme)'; allowed: \S"
    for bad in (
        lambda: config.RunConfig().replace({"optim.nme": 1}),
        lambda: config.RunConfig().replace({"bogus.nme": 1}),
        lambda: config.from_dict({"optim": {"nme": 1}}),
        lambda: config.coerce("optim.nme", 1),
        lambda: LaunchConfig.from_dict({"nme": 1}),
        lambda: _launch_set(["launch.nme=1"]),
        lambda: Sweep.from_dict({"base": {"optim.nme": 1}}, root=tmp_path),
        lambda: Sweep.from_dict({"sample": {"optim.nme": {"uniform": [0, 1]}}}, root=tmp_path),
    ):
        with pytest.raises(ConfigError) as e:
            bad()
        message = str(e.value)
        assert "\n" not in message and re.search(shape, message), message
    with pytest.raises(ConfigError, match="allowed: .*train.<key>, preset, stem, optimizer, epochs"):
        Sweep.from_dict({"grid": {"optimiser": ["sgd"]}}, root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_typed_reads_the_real_type_hints():
    hints = config.hints(LaunchConfig)
    assert config.typed(" AUTO ", hints["parallel"], "p") == "auto"
    assert config.typed("1e1", hints["parallel"], "p") == 10
    assert config.typed("Local", hints["cluster"], "c") == "local"
    assert config.typed("{exclude: 'node[1-2]'}", hints["additional"], "a") == {"exclude": "node[1-2]"}
    assert config.typed("2", hints["mem_gb"], "m") == 2.0 and config.typed("7", hints["partition"], "p") == "7"
    assert config.typed("on", config.hints(config.DataConfig)["hflip"], "h") is True
    for value, hint, words in (
        ("moon", hints["cluster"], "unknown c 'moon'; allowed: auto, slurm, local"),
        ("all", hints["parallel"], "c must be int"),
        ("1.5", hints["parallel"], "whole number"),
        ("{a: &x [1], b: *x}", hints["additional"], "must be dict"),  # aliases could expand without bound
        ("[" * 10_000, hints["additional"], "must be dict"),
        (3, hints["partition"], "must be str"),
        ("1", bool, "must be bool"),
    ):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
            config.typed(value, hint, "c")
