"""Run the benchmarks: python -m benchmarks.run [--quick] [--only NAME] [--preset NAME] [--big]; JSON to benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import time
import warnings

from benchmarks.common import write
from benchmarks.throughput import SMALL

NAMES = ("throughput", "sweep", "fastpaths", "analysis", "monitor")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer presets, repeats and images (minutes)")
    p.add_argument("--only", choices=NAMES, action="append", help="run only this benchmark (repeatable)")
    p.add_argument("--preset", action="append", choices=SMALL, help="throughput: measure only this preset (repeatable)")
    p.add_argument("--big", action="store_true", help="also the 224 px presets when no GPU is present (slow)")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    for name in a.only or NAMES:
        t0 = time.perf_counter()
        if name == "throughput":
            from benchmarks import throughput

            payload = throughput.run(a.quick, a.big, a.preset)
        elif name == "sweep":
            from benchmarks import sweep

            payload = sweep.run(a.quick)
        elif name == "fastpaths":
            from benchmarks import fastpaths

            payload = fastpaths.run(a.quick)
        elif name == "monitor":
            from benchmarks import monitor

            payload = monitor.run(a.quick)
        else:
            from benchmarks import analysis_speed

            payload = analysis_speed.run(a.quick)
        payload["quick"] = a.quick
        payload["bench_seconds"] = time.perf_counter() - t0
        path = write(name, payload)
        print(f"{name}: {path} ({payload['bench_seconds']:.0f} s)")
        print(json.dumps(payload, indent=1)[:3000])


if __name__ == "__main__":
    main()
