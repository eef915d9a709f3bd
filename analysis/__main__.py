"""Command line: python -m analysis <command> --help."""

from __future__ import annotations

import argparse
import sys

from analysis.errors import ConfigError


def _train(args) -> None:
    from analysis import config
    from analysis.train import train

    cfg = config.load(args.config) if args.config else config.RunConfig()
    overrides = config.parse_overrides(args.overrides)
    if args.preset:
        overrides["model.preset"] = args.preset
    cfg = cfg.replace(overrides)
    result = train(cfg, args.out)
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
            row.update(params_M=round(cx["params"] / 1e6, 2), gflops=round(cx["flops"] / 1e9, 3),
                       acts_M=round(cx["acts"] / 1e6, 2))
            del m
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))


def _demo(args) -> None:
    from analysis.demo import main

    main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis",
                                description="Conv vs patchify stems in ViTs: train, sweep, analyse.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    t = sub.add_parser("train", help="train one run into a run directory",
                       description="Train one run. Overrides are section.key=value, e.g. optim.lr=1e-3 "
                                   "train.epochs=10 optim.name=sgd (keys: see analysis/config.py).")
    t.add_argument("--preset", help="model preset (python -m analysis presets lists them)")
    t.add_argument("--config", help="a run config YAML to start from")
    t.add_argument("--out", required=True, help="the run directory (resumed if it holds a checkpoint)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.set_defaults(func=_train)

    pr = sub.add_parser("presets", help="list the model presets", description="List model presets.")
    pr.add_argument("--kind", choices=["vit", "cnn"], help="only this family")
    pr.add_argument("--complexity", action="store_true", help="also count params, flops and activations")
    pr.set_defaults(func=_presets)

    d = sub.add_parser("demo", help="the main job: ViT_P vs ViT_C on Fashion-MNIST",
                       description="Train the small ViT_P and ViT_C on Fashion-MNIST and compare them.")
    d.add_argument("--out", default="runs/demo", help="where the runs go (default runs/demo)")
    d.add_argument("--epochs", type=int, default=None, help="schedule length (default: the demo's)")
    d.add_argument("--full", action="store_true", help="the longer, more faithful setting")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
