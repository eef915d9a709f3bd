"""Sweeps: specs (grids and samplers), launching through submitit (SLURM or local processes),
status, cancel/resubmit, and collecting run directories into one DataFrame.

    from analysis.sweeps import Sweep, collect
    sweep = Sweep.from_yaml("jobs/fmnist_demo.yaml", root="sweeps")
    sweep.launch()
    sweep.status()
    frame = collect(sweep.dir)
"""

from analysis.names import model_name
from analysis.sweeps.launch import Sweep, detect_cluster
from analysis.sweeps.results import collect
from analysis.sweeps.options import LaunchConfig
from analysis.sweeps.spec import Sampler, Spec

__all__ = ["Sweep", "Spec", "Sampler", "collect", "model_name", "detect_cluster", "LaunchConfig"]
