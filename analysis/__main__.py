"""Command line: stemlab <command> --help (or python -m analysis <command> --help)."""

from __future__ import annotations

import os
import sys

# `python -m` puts the working folder first on sys.path, so a `yaml.py` planted in a sweep folder that
# a user cd's into would be imported instead of the real one: drop it before anything else is imported
# (a planted `analysis/` package itself is imported before this runs: only `stemlab` and `python -P`
# avoid that; the `stemlab` console script never has the working folder on its path).
if __name__ == "__main__" and sys.path and not sys.flags.safe_path:
    if os.path.realpath(sys.path[0] or os.curdir) == os.path.realpath(os.curdir):
        del sys.path[0]

import argparse  # noqa: E402
import errno  # noqa: E402
import re  # noqa: E402

from analysis.errors import ConfigError, UserError  # noqa: E402


def _train(args) -> None:
    from analysis import config
    from analysis.engine.train import train

    cfg = config.load(args.config) if args.config else config.RunConfig()
    overrides = config.parse_overrides(args.overrides)
    if args.preset:
        overrides["model.preset"] = args.preset
    cfg = cfg.replace(overrides)
    for text in cfg.unusual():
        _warning_line(f"{text} is far outside the usual range", UserWarning, "", 0)
    result = train(cfg, args.out, restart=args.restart)
    print(f"{result['status']}: test top-1 error {result['top1_err']:.2f}% -> {args.out}")


def _presets(args) -> None:
    import pandas as pd

    from analysis.models import PRESETS, complexity, create_model

    rows = []
    for name in PRESETS:
        if args.kind and PRESETS[name].get("family") != args.kind:
            continue
        row = {"preset": name, **{k: PRESETS[name].get(k) for k in ("family", "img_size", "in_chans")}}
        if args.complexity:
            m = create_model(name)
            cx = complexity(m, m.img_size, m.in_chans)
            row.update(
                params_M=round(cx["params"] / 1e6, 2),
                gflops=round(cx["flops"] / 1e9, 3),
                acts_M=round(cx["acts"] / 1e6, 2),
            )
            del m
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))


def _report(args) -> None:
    from analysis.report import write_report

    out = write_report(
        args.sweep_dir, args.out, probes=not args.no_probes, png_dir=args.png, trust_code=args.trust_code
    )
    print(f"report: {out}")


def _claims(args) -> None:
    from analysis.claims import claims_text
    from analysis.replication import replication_table, replication_text, sweep_tables

    tables = sweep_tables(args.sweep_dir, within=args.within, resamples=args.resamples, seed=args.seed)
    if len(tables) > 1:  # several seeds of one spec: the replication table
        rep = replication_table(tables)
        print(rep.to_json(orient="records", indent=1) if args.json else replication_text(rep))
        return
    table = next(iter(tables.values()))
    print(table.to_json(orient="records", indent=1) if args.json else claims_text(table))


def _demo(args) -> None:
    from analysis.demo import main

    main(args)


def _launch_set(items: list[str]) -> dict:
    """--set launch.KEY=VALUE items as typed launch options, read like the spec's `launch:` section
    (LaunchConfig.from_dict: a number, a string, a null word, YAML for `additional`)."""
    from analysis.sweeps.options import LaunchConfig

    texts = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().removeprefix("launch.")
        if not eq:
            raise ConfigError(f"--set takes launch.KEY=VALUE, e.g. launch.partition=gpu; got {item!r}")
        if key in texts:
            raise ConfigError(f"--set launch.{key} is given twice; give it once")
        texts[key] = value
    opts = LaunchConfig.from_dict(texts)
    return {key: getattr(opts, key) for key in texts}


def _print_status(status) -> None:
    import pandas as pd

    cols = ["run", "state", "job_id", "attempts", "epoch", "epochs", "test_err", "reason"]
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 80):
        print(status[cols].to_string(index=False))
    for run, text in zip(status["run"], status["log_tail"]):
        if text:
            print(f"--- {run}\n{text}")
    print(", ".join(f"{k}: {v}" for k, v in sorted(status.counts().items())))


def _wait(sweep, timeout: float | None):
    """Wait for the sweep; on Ctrl-C say in one line what still runs and how to resume, exit 130."""
    last = []

    def keep(status) -> None:
        last[:] = [status]

    try:
        return sweep.wait(timeout=timeout, callback=keep)
    except TimeoutError as e:
        print(f"timeout: {e} (they go on; see python -m analysis sweep status {sweep.dir})", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        note = sweep.still_running(last[0]) if last else f"interrupted; see python -m analysis sweep status {sweep.dir}"
        print(note, file=sys.stderr)
        raise SystemExit(130) from None


def _collect(args) -> None:
    import pandas as pd
    from pathlib import Path

    from analysis.sweeps import collect

    frame = collect(args.target)
    if args.out:
        import io

        from analysis import rundir

        out = Path(args.out)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False) if out.suffix == ".parquet" else frame.to_csv(buf, index=False)
        rundir.write_output(out, buf.getvalue())  # a kill or a full disk never leaves a torn file
        print(f"{len(frame)} runs -> {out}")
        return
    cols = ["run", "status", "model", "optimizer", "epochs", "lr", "wd", "error", "epochs_done"]
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(frame[cols].to_string(index=False))


def _sweep(args) -> None:
    """sweep launch|status|cancel|resubmit|collect."""
    from analysis.sweeps import Sweep
    from analysis.sweeps.spec import Spec

    if args.action == "collect":
        return _collect(args)
    opts = _launch_set(args.set)
    opts.update({k: v for k, v in (("cluster", args.cluster), ("parallel", args.parallel)) if v is not None})
    if args.action == "launch":
        spec = Spec.from_yaml(args.target)
        spec.launch.updated(**opts)  # every option checked before the sweep folder is written
        sweep = Sweep.create(spec, root=args.root)
        ids = sweep.launch(trust_code=args.trust_code, **opts)
        print(
            f"{sweep.dir}: launched {len(ids)} job(s) {' '.join(ids)}"
            if ids
            else f"{sweep.dir}: nothing to launch (every run is complete, queued or running)"
        )
    else:
        sweep = Sweep.open(args.target)
    if args.action == "cancel":
        ids = sweep.cancel(args.runs or None)
        print(f"cancelled {len(ids)} job(s) {' '.join(ids)}")
    elif args.action == "resubmit":
        ids = sweep.resubmit(max_retries=args.max_retries, trust_code=args.trust_code, **opts)
        print(f"resubmitted {len(ids)} job(s) {' '.join(ids)}")
    if args.action in ("launch", "status"):
        status = _wait(sweep, args.timeout) if args.wait else None
        if args.action == "status" or args.wait:
            _print_status(status if status is not None else sweep.status())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis", description="Conv vs patchify stems in ViTs: train, sweep, analyse."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary, description, add_arguments, func in _COMMANDS:
        command = sub.add_parser(name, help=summary, description=description)
        add_arguments(command)
        command.set_defaults(func=func)
    return p


def _train_args(t) -> None:
    t.add_argument("--preset", help="model preset (python -m analysis presets lists them)")
    t.add_argument("--config", help="a run config YAML to start from")
    t.add_argument("--out", required=True, help="the run directory (resumed if it holds a checkpoint)")
    t.add_argument(
        "--restart", action="store_true", help="start the run over: remove its checkpoint, metrics and result first"
    )
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")


def _presets_args(pr) -> None:
    pr.add_argument("--kind", choices=["vit", "cnn"], help="only this family")
    pr.add_argument("--complexity", action="store_true", help="also count params, flops and activations")


def _demo_args(d) -> None:
    d.add_argument("--root", default="sweeps", help="folder the sweep goes in (default sweeps)")
    d.add_argument(
        "--cluster",
        default="local",
        choices=["local", "slurm", "auto"],
        help="where the runs go (default local processes)",
    )
    d.add_argument(
        "--parallel", type=_parallel, default=None, help="processes at once (default auto: one per available core)"
    )
    d.add_argument("--full", action="store_true", help="the longer, more faithful setting")
    d.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run the spec on this many held-out seeds (its own and the ones after it) and print the "
        "replication table: each seed's estimate and interval per claim, and how many reproduce it",
    )


def _parallel(text: str):
    """--parallel: a whole number >= 1 or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or auto, got {text!r}")
    return value


def _report_args(r) -> None:
    r.add_argument("sweep_dir", help="the sweep folder (e.g. sweeps/fmnist_demo)")
    r.add_argument("--out", help="the HTML file (default SWEEP_DIR/report.html)")
    r.add_argument("--png", metavar="DIR", help="also export every figure as PNG into DIR (needs Chromium)")
    r.add_argument("--no-probes", action="store_true", help="leave out attention maps and filters")
    r.add_argument(
        "--trust-code",
        action="store_true",
        help="import the stem import paths the runs' configs name (never from inside the sweep)",
    )


def _claims_args(c) -> None:
    c.add_argument(
        "sweep_dir",
        nargs="+",
        help="the sweep folder (e.g. sweeps/fmnist_demo); several sweeps of one spec on different seeds "
        "give the replication table: each seed's estimate, interval and verdict, and how many reproduce it",
    )
    c.add_argument("--within", type=float, default=4.0, help="k of the within-k-points statistic (default 4)")
    c.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--json", action="store_true", help="print the table as JSON records instead")


def _sweep_args(sw) -> None:
    sw.add_argument("action", choices=["launch", "status", "cancel", "resubmit", "collect"])
    sw.add_argument("target", help="launch: a spec YAML; otherwise: the sweep folder (e.g. sweeps/fmnist_demo)")
    sw.add_argument("--root", default="sweeps", help="launch: where sweep folders go (default sweeps)")
    sw.add_argument("--cluster", choices=["auto", "slurm", "local"], help="launch/resubmit: where jobs run")
    sw.add_argument(
        "--parallel", type=_parallel, help="launch: local processes at once (auto: one per core) / SLURM array limit"
    )
    sw.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="launch.KEY=VALUE",
        help="launch/resubmit: launch options, e.g. launch.partition=gpu launch.gpus_per_node=8 "
        "(--cluster and --parallel win over launch.cluster and launch.parallel)",
    )
    sw.add_argument(
        "--wait",
        action="store_true",
        help="launch/status: block until no run is pending or running (Ctrl-C stops waiting; the jobs go on)",
    )
    sw.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    sw.add_argument("--runs", nargs="*", help="cancel: only these run ids")
    sw.add_argument("--max-retries", type=int, help="resubmit: launches per run at most this plus one")
    sw.add_argument(
        "--trust-code",
        action="store_true",
        help="launch/resubmit: let jobs import the stem import paths the sweep's run configs name "
        "(never from inside the sweep; launching your own spec needs no flag)",
    )
    sw.add_argument("--out", help="collect: write CSV (or .parquet) here instead of printing")


# The subcommands, in the order --help lists them: name, its line in that list, the description its own
# --help shows, the function that adds its arguments and the function it runs.
_COMMANDS = (
    (
        "train",
        "train one run into a run directory",
        "Train one run. Overrides are section.key=value, e.g. optim.lr=1e-3 "
        "train.epochs=10 optim.name=sgd (keys: see analysis/config.py).",
        _train_args,
        _train,
    ),
    ("presets", "list the model presets", "List model presets.", _presets_args, _presets),
    (
        "demo",
        "the main job: ViT_P vs ViT_C on Fashion-MNIST",
        "ViT_P vs ViT_C on Fashion-MNIST over sampled lr and wd with AdamW and "
        "SGD: launch the sweep, collect it, write the report, print the headline.",
        _demo_args,
        _demo,
    ),
    (
        "report",
        "write a sweep's HTML report",
        "Collect a sweep and write one offline HTML report: summary, EDFs, "
        "stability plots, curves, attention and filters of the best runs.",
        _report_args,
        _report,
    ),
    (
        "claims",
        "the paper's claims as statistics of a sweep",
        "Collect a sweep and print each claim of the paper it can speak to: the "
        "statistic, a 95% bootstrap interval and a verdict (reproduced, contradicted, "
        "inconclusive). See analysis/claims.py.",
        _claims_args,
        _claims,
    ),
    (
        "sweep",
        "launch, watch and collect sweeps (jobs/*.yaml)",
        "Sweeps: launch a spec (jobs/*.yaml) as one job array (SLURM where a "
        "cluster answers, local processes elsewhere); then status, cancel, "
        "resubmit and collect the sweep folder.",
        _sweep_args,
        _sweep,
    ),
)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a skipped corrupt run, an unreachable scheduler) as one line each."""
    print(f"warning: {message}", file=file or sys.stderr)


USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EROFS, errno.EACCES, errno.EPERM)


def os_error_line(e: OSError) -> str:
    """One line for an OS error a user can cause (no space, name too long, read-only, permissions)."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or type(e).__name__}{where}"[:500]


# Control characters but newline, tab and carriage return: what a folder's text could use to drive the
# terminal (ESC sequences that retitle it, write the clipboard through OSC 52 or clear the screen).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """text without the control characters a terminal acts on (escape sequences lose their ESC)."""
    return _CONTROL.sub("", text)


class _Printable:
    """A text stream that strips control characters from what is written to it (see printable)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


# commands that print what a run or sweep folder holds (reasons, log tails, names): their output is
# stripped of control characters; train and demo print the suite's own progress bars as they are
_READS_FOLDERS = ("sweep", "claims", "report")


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = parser().parse_args(argv)
    warnings.showwarning = _warning_line
    streams = sys.stdout, sys.stderr
    if args.command in _READS_FOLDERS:
        sys.stdout, sys.stderr = _Printable(sys.stdout), _Printable(sys.stderr)
    try:
        return _main(args)
    finally:
        sys.stdout, sys.stderr = streams


def _main(args) -> int:
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _printable_traceback(kind, error, tb) -> None:
    """sys.excepthook of the command line: an uncaught error's traceback may quote what a folder holds,
    so it goes through the same filter as folder-reading commands' output (printable)."""
    import traceback

    sys.stderr.write(printable("".join(traceback.format_exception(kind, error, tb))))


def run() -> None:
    """The `stemlab` console script (and `python -m analysis`)."""
    sys.excepthook = _printable_traceback
    sys.exit(main())


if __name__ == "__main__":
    run()
