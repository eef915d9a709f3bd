"""The main job: ViT_P against ViT_C on Fashion-MNIST over sampled lr and wd, with AdamW and SGD.

Launches the demo sweep through submitit (local processes unless told otherwise), waits for it,
collects it, writes the HTML report and prints the headline numbers. Run it again and finished
runs are kept: only missing ones train.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

SPECS = {"short": "jobs/fmnist_demo.yaml", "full": "jobs/fmnist_demo_full.yaml"}
REPO = Path(__file__).resolve().parent.parent


def _progress(status: pd.DataFrame) -> str:
    counts = status["state"].value_counts().to_dict()
    return ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))


def run(full: bool = False, root: str | Path = "sweeps", cluster: str = "local", parallel: int | None = None,
        poll: float = 20.0, echo=print) -> tuple[Path, pd.DataFrame]:
    """Run the demo sweep end to end; return (report path, headline table)."""
    from analysis.report import headline, write_report
    from analysis.sweeps import Sweep

    t0 = time.time()
    sweep = Sweep.from_yaml(REPO / SPECS["full" if full else "short"], root=root)
    echo(f"sweep {sweep.dir}: {len(sweep.run_ids)} runs; launching on {cluster} ...")
    sweep.launch(cluster=cluster, parallel=parallel)
    last = ""
    while True:
        status = sweep.status()
        line = _progress(status)
        if line != last:
            echo(f"[{time.time() - t0:5.0f}s] {line}")
            last = line
        if not status["state"].isin(["PENDING", "RUNNING"]).any():
            break
        time.sleep(poll)
    df = sweep.collect()
    report = write_report(sweep.dir)
    table = headline(df)
    echo("")
    echo(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    echo(f"\nreport: {report}\ntotal time: {time.time() - t0:.0f} s")
    return report, table


def main(args) -> None:
    run(full=args.full, root=args.root, cluster=args.cluster, parallel=args.parallel)
