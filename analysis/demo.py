"""The main job: ViT_P against ViT_C on Fashion-MNIST over sampled lr and wd, with AdamW and SGD.

Launches the demo sweep through submitit (local processes unless told otherwise), waits for it
(a line per change of the run counts and a bar of completed runs), collects it, writes the HTML
report and prints the headline numbers and the paper's claims as statistics with their intervals. Run it again and finished runs are kept: only missing ones
train. Ctrl-C stops the waiting, not the runs: one line says what still runs and how to watch,
cancel or resume it (`make demo` again picks up where the sweep is).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from analysis.sweeps.progress import Progress

SPECS = {"short": "jobs/fmnist_demo.yaml", "full": "jobs/fmnist_demo_full.yaml"}
REPO = Path(__file__).resolve().parent.parent


def _resume_command(full: bool, root, cluster: str) -> str:
    cmd = "python -m analysis demo" + (" --full" if full else "")
    if str(root) != "sweeps" or cluster != "local":
        return cmd + f" --root {root} --cluster {cluster}"
    return f"make demo{'-full' if full else ''} (or {cmd})"


def run(
    full: bool = False,
    root: str | Path = "sweeps",
    cluster: str = "local",
    parallel: int | None = None,
    poll: float = 20.0,
    echo=print,
    spec: str | Path | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Run the demo sweep (or the sweep of `spec`) end to end; return (report path, headline table).
    On Ctrl-C while waiting, print one line about what still runs and how to resume, then exit with
    status 130."""
    from analysis.claims import claims_table, claims_text
    from analysis.report import headline, write_report
    from analysis.sweeps import Sweep

    t0 = time.time()
    sweep = Sweep.from_yaml(spec or REPO / SPECS["full" if full else "short"], root=root)
    echo(f"sweep {sweep.dir}: {len(sweep.run_ids)} runs; launching on {cluster} ...")
    sweep.launch(cluster=cluster, parallel=parallel)
    progress = Progress(len(sweep.run_ids), echo, t0)
    try:
        sweep.wait(poll=poll, callback=progress)
    except KeyboardInterrupt:
        progress.close()
        last = progress.last if progress.last is not None else sweep.status()
        print(sweep.still_running(last, resume=_resume_command(full, root, cluster)), file=sys.stderr)
        raise SystemExit(130) from None
    progress.close()
    df = sweep.collect()
    report = write_report(sweep.dir)
    table = headline(df)
    echo("")
    echo(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    echo(
        "\nThe paper's claims on this sweep (95% bootstrap intervals; python -m analysis claims "
        f"{sweep.dir} reprints them):\n"
    )
    echo(claims_text(claims_table(df)))
    echo(f"\nreport: {report}\ntotal time: {time.time() - t0:.0f} s")
    return report, table


def main(args) -> None:
    run(full=args.full, root=args.root, cluster=args.cluster, parallel=args.parallel)
