"""Replication over seeds: per-seed claims side by side, and how many seeds reproduce each claim."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
from tests.test_claims import frame, stable_vs_unstable

from analysis.__main__ import main
from analysis.claims import claims_table
from analysis.errors import ConfigError
from analysis.replication import replication_table, replication_text, same_spec, seed_specs


def _tables(seeds, flip=()):
    """Claims tables of constructed sweeps, one per seed; seeds in `flip` have the stems swapped."""
    out = {}
    for s in seeds:
        errors = stable_vs_unstable("P", "C", seed=s) if s in flip else stable_vs_unstable("C", "P", seed=s)
        out[f"seed {s}"] = claims_table(frame(errors), resamples=500)
    return out


def test_each_seed_has_its_estimate_interval_and_verdict_and_two_of_three_reproduce():
    rep = replication_table(_tables([11, 12, 13], flip=[13]))
    row = rep.set_index(["claim", "subject", "optimizer"]).loc[("optimizer_gap_best_difference", "ViT_P vs ViT_C", "")]
    assert [row[f"seed {s} verdict"] for s in (11, 12, 13)] == ["reproduced", "reproduced", "contradicted"]
    assert row["reproduced"] == "2 of 3" and row["replicated"] == "reproduced"
    assert row["seed 11 interval"].startswith("[") and np.isfinite(row["seed 11 estimate"])
    assert not rep.claim.isin(["within_k", "peak"]).any()  # levels carry no verdict to replicate
    text = replication_text(rep)
    assert "seed 13" in text and "2 of 3" in text and "contradicted" in text


def test_one_seed_of_three_is_not_replication():
    rep = replication_table(_tables([11, 12, 13], flip=[12, 13]))
    row = rep.set_index(["claim", "subject", "optimizer"]).loc[("optimizer_gap_best_difference", "ViT_P vs ViT_C", "")]
    assert row["reproduced"] == "1 of 3" and row["replicated"] == "contradicted"
    mixed = replication_table({**_tables([11], flip=[11]), **_tables([12]), **_tables([13], flip=[13])}, required=3)
    assert set(mixed.replicated) <= {"inconclusive", "contradicted", "insufficient"}


def test_replication_needs_two_sweeps_of_one_spec():
    with pytest.raises(ConfigError, match="at least 2 sweeps"):
        replication_table(_tables([1]))
    spec = {"name": "x", "seed": 3, "base": {"train": {"epochs": 2, "seed": 3}}, "grid": {"preset": ["a"]}}
    specs = seed_specs(spec, [3, 4, 5])
    assert [s["name"] for s in specs] == ["x", "x-seed4", "x-seed5"]
    assert [(s["seed"], s["base"]["train"]["seed"]) for s in specs] == [(3, 3), (4, 4), (5, 5)]
    assert spec["seed"] == 3 and spec["base"]["train"]["seed"] == 3  # the caller's spec is left alone
    same_spec(specs)
    other = copy.deepcopy(specs[1])
    other["base"]["train"]["epochs"] = 4
    with pytest.raises(ConfigError, match="not the same spec"):
        same_spec([specs[0], other])
    with pytest.raises(ConfigError, match="distinct"):
        seed_specs(spec, [3, 3])


TINY = {
    "name": "tiny_rep",
    "base": {
        "data": {"train_per_class": 8, "test_per_class": 5},
        "train": {"epochs": 1, "batch_size": 40, "precision": "fp32", "threads": 1, "checkpoint_minutes": 0},
        "optim": {"ref_batch": 40, "warmup_epochs": 0},
    },
    "grid": {
        "preset": ["vit_p_fmnist_p16_tiny", "vit_c_fmnist_p16_tiny"],
        "optimizer": [
            {"optim.name": "adamw", "optim.lr": {"log_uniform": [5e-4, 4e-3]}},
            {"optim.name": "sgd", "optim.lr": {"log_uniform": [0.02, 0.3]}},
        ],
    },
    "samples": 1,
    "seed": 21,
    "launch": {"cluster": "local", "timeout_min": 20},
}


@pytest.mark.slow
def test_claims_over_three_real_tiny_sweeps_on_different_seeds(tmp_path, capsys):
    """Three real sweeps of one spec (seeds 21-23) through `python -m analysis claims A B C`: a
    column per seed, and groups of one run are "insufficient", never a verdict."""
    from analysis.sweeps import Sweep

    sweeps = [Sweep.from_dict(s, root=tmp_path) for s in seed_specs(TINY, [21, 22, 23])]
    for s in sweeps:
        s.launch(wait=True, timeout=600)
    assert main(["claims", *(str(s.dir) for s in sweeps), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert all(f"seed {s}" in out for s in (21, 22, 23)) and "0 of 3" in out and "insufficient" in out
    assert "reproduced " not in out.replace("reproduced  replicated", "")
    assert main(["claims", str(sweeps[0].dir), "--json"]) == 0
    records = pd.DataFrame(json.loads(capsys.readouterr().out))
    assert set(records.verdict) <= {"insufficient", ""}


def test_seed_specs_take_dotted_seeds_an_empty_base_and_no_name():
    from analysis.sweeps import Spec

    specs = seed_specs(
        {"base": {"train.seed": 1, "train.epochs": 2}, "grid": {"preset": ["vit_p_fmnist_tiny"]}}, [3, 4]
    )
    assert [s["name"] for s in specs] == ["sweep", "sweep-seed4"]
    assert [Spec.from_dict(s).runs()[0]["cfg"].train.seed for s in specs] == [3, 4]
    assert seed_specs({"name": "x", "base": None}, [1, 2])[1]["base"] == {"train": {"seed": 2}}
