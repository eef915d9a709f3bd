"""A real small sweep, trained once per test session through the local launcher.

ViT_P vs ViT_C (tiny presets) x {AdamW, SGD} x 2 sampled (lr, wd) on a Fashion-MNIST subset,
2 epochs each. The figure, widget, report and notebook tests read it like a user's sweep.
"""

import pytest

REAL_SPEC = {
    "name": "real_small",
    "base": {
        "data": {"train_per_class": 40, "test_per_class": 20},
        "train": {"epochs": 2, "batch_size": 50, "precision": "fp32", "progress": "lines", "checkpoint_minutes": 0},
        "optim": {"ref_batch": 50, "warmup_epochs": 0.5},
    },
    "grid": {
        "preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"],
        "optimizer": [
            {"optim.name": "adamw", "optim.lr": {"log_uniform": [5e-4, 4e-3]}},
            {"optim.name": "sgd", "optim.lr": {"log_uniform": [0.02, 0.3]}},
        ],
    },
    "sample": {"optim.weight_decay": {"log_uniform": [1e-4, 0.1]}},
    "samples": 2,
    "seed": 0,
    "launch": {"cluster": "local", "parallel": 1, "timeout_min": 30},
}


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory):
    """The folder of a finished real sweep (8 runs)."""
    from analysis.sweeps import Sweep

    sweep = Sweep.from_dict(REAL_SPEC, root=tmp_path_factory.mktemp("sweeps"))
    sweep.launch(wait=True, timeout=900)
    return sweep.dir


@pytest.fixture(scope="session")
def real_frame(real_sweep):
    """The collected DataFrame of the real sweep."""
    from analysis.sweeps import collect

    return collect(real_sweep)
