"""Every file name of run and sweep folders, in one place (the run-directory contract, README)."""

from __future__ import annotations

# a run folder (README, "The run directory")


CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
LOG = "log.txt"
LOCK = "train.lock"
JOB = "job.json"  # which sweep job trains (or last trained) the run
METRIC_KEYS = (  # the keys of a metrics.jsonl row (Member.train writes them)
    "epoch",
    "step",
    "train_loss",
    "test_top1_err",
    "test_top5_err",
    "ema_top1_err",
    "ema_top5_err",
    "lr",
    "seconds",
    "images_per_s",
    "elapsed",
)
WRITTEN = (CONFIG, METRICS, CHECKPOINT, RESULT, LOG, LOCK, JOB)  # what the suite writes in a run folder

# a sweep folder (README, "Sweeps"): its spec, run table, run folders, code snapshots, job files, records
SPEC = "spec.yaml"  # the spec as given
RUN_TABLE = "runs.json"  # the sampled runs: ids, overrides, sampled keys
RUN_TABLE_CSV = "runs.csv"  # the same as a flat table
RUNS = "runs"  # runs/<run id>/: one run folder each
CODE = "code"  # code/launch-NNN/: the package each launch's jobs run
SUBMITIT = "submitit"  # submitit/launch-NNN-xxxx/: one launch's job files, made fresh (mode 0700)
LAUNCHES = "launches.json"  # job ids and their runs, per launch
LAUNCH_LOCK = ".launch.lock"  # two launches of one sweep take turns on it
COLLECT_CACHE = ".collect_cache.json"  # collect()'s rows, keyed by file_key
REPORT = "report.html"  # write_report's default output
