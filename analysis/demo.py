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

from analysis.errors import ConfigError
from analysis.sweeps.progress import Progress

SPECS = {"short": "jobs/fmnist_demo.yaml", "full": "jobs/fmnist_demo_full.yaml"}
REPO = Path(__file__).resolve().parent.parent


def _resume_command(full: bool, root, cluster: str, seeds: int = 1) -> str:
    cmd = "python -m analysis demo" + (" --full" if full else "") + (f" --seeds {seeds}" if seeds > 1 else "")
    if str(root) != "sweeps" or cluster != "local" or seeds > 1:
        return cmd + f" --root {root} --cluster {cluster}"
    return f"make demo{'-full' if full else ''} (or {cmd})"


def run(
    full: bool = False,
    root: str | Path = "sweeps",
    cluster: str = "local",
    parallel: int | str | None = None,
    poll: float = 20.0,
    echo=print,
    spec: str | Path | None = None,
    seeds: int = 1,
) -> tuple[Path, pd.DataFrame]:
    """Run the demo sweep (or the sweep of `spec`) end to end; return (report path, headline table)
    of its first seed. seeds=N runs the spec on N held-out seeds, the spec's own and the N-1 after it
    (analysis.replication.seed_specs), one sweep after another, and prints the replication table.
    On Ctrl-C while waiting, print one line about what still runs and how to resume, then exit with
    status 130."""
    from analysis.claims import claims_table, claims_text
    from analysis.replication import replication_table, replication_text, seed_specs
    from analysis.report import headline, write_report
    from analysis.sweeps import Sweep
    from analysis.trust import load_yaml

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a whole number >= 1, got {seeds!r}")
    t0 = time.time()
    d = load_yaml(spec or REPO / SPECS["full" if full else "short"])
    first = int(d.get("seed", 0)) if isinstance(d, dict) else 0
    specs = seed_specs(d, [first + k for k in range(seeds)]) if seeds > 1 else [d]
    sweeps = [Sweep.from_dict(s, root=root) for s in specs]
    for sweep in sweeps:
        _train(sweep, cluster, parallel, poll, echo, _resume_command(full, root, cluster, seeds))
    tables, reports = {}, []
    for sweep, s in zip(sweeps, specs):
        df = sweep.collect()
        reports.append(write_report(sweep.dir))
        tables[f"seed {s.get('seed', 0)}"] = claims_table(df)
        if len(tables) == 1:
            table = headline(df)
    echo("")
    echo(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    echo(
        "\nThe paper's claims on this sweep (95% bootstrap intervals; python -m analysis claims "
        f"{sweeps[0].dir} reprints them):\n"
    )
    echo(claims_text(next(iter(tables.values()))))
    if len(tables) > 1:
        dirs = " ".join(str(s.dir) for s in sweeps)
        echo(f"\nReplication over {len(tables)} seeds (python -m analysis claims {dirs} reprints it):\n")
        echo(replication_text(replication_table(tables)))
    echo(f"\nreport: {reports[0]}" + (f" (and {len(reports) - 1} more)" if len(reports) > 1 else ""))
    echo(f"total time: {time.time() - t0:.0f} s")
    return reports[0], table


def _train(sweep, cluster: str, parallel, poll: float, echo, resume: str) -> None:
    """Launch the sweep's missing runs and wait for them with a progress line per change."""
    echo(f"sweep {sweep.dir}: {len(sweep.run_ids)} runs; launching on {cluster} ...")
    t0 = time.time()
    sweep.launch(cluster=cluster, parallel=parallel)
    progress = Progress(len(sweep.run_ids), echo, t0)
    try:
        sweep.wait(poll=poll, callback=progress)
    except KeyboardInterrupt:
        progress.close()
        last = progress.last if progress.last is not None else sweep.status()
        print(sweep.still_running(last, resume=resume), file=sys.stderr)
        raise SystemExit(130) from None
    progress.close()


def main(args) -> None:
    run(full=args.full, root=args.root, cluster=args.cluster, parallel=args.parallel, seeds=args.seeds)
