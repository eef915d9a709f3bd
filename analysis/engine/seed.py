"""Seeding Python's, numpy's and torch's global generators (model init, mixup's draws)."""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
