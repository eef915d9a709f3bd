"""Conv stems against patchify stems in Vision Transformers (Xiao et al., 2021).

Models, a training engine, SLURM sweeps and interactive analyses. Training jobs and
analyses meet only in the run directory (see README, "The run directory").
"""

__version__ = "0.1.0"
