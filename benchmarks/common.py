"""Timing, memory and result helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "_data"  # decompressed / synthetic datasets for the reference loops


def machine() -> dict:
    """CPU model, core count, torch threads, bf16/AMX flags, load average and the accelerator."""
    flags = ""
    model = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
        model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "load_avg": os.getloadavg(),
    }


def write(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json (with the machine description); return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device="cpu") -> dict[str, dict]:
    """Time each callable `repeats` times, alternating between them (so load drifts hit all alike).

    Returns {name: {"median_s", "min_s", "max_s", "times"}}; a warm-up call of each comes first.
    """
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "times": v} for k, v in times.items()
    }


def ratios(timed: dict[str, dict], base: str) -> dict[str, float]:
    """Speed-up of each entry over `base` (base median time / entry median time)."""
    b = timed[base]["median_s"]
    return {k: b / v["median_s"] for k, v in timed.items()}


def spread(values: list[float]) -> float:
    """Relative spread (max - min) / median: a noise indicator reported next to medians."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else float("nan")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager sampling this process's resident memory every few ms; `.peak_delta` is the
    peak over the value at entry (bytes). CUDA: torch's peak allocated memory instead."""

    def __init__(self, device="cpu", every_s: float = 0.002):
        self.device = torch.device(device)
        self.every = every_s
        self.peak_delta = 0

    def __enter__(self) -> "PeakRSS":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_bytes())
                time.sleep(self.every)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_delta = torch.cuda.max_memory_allocated() - self.start
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.peak_delta = self.peak - self.start


def matmul_peak(dtype: torch.dtype, device="cpu", n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n x n matmul in `dtype` (median of repeats)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timed = interleaved({"mm": lambda: a @ b}, repeats, device)
    return 2 * n**3 / timed["mm"]["median_s"]
