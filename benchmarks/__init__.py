"""Benchmarks: the suite's training engine, batched sweeps and probes, each measured side by side
with a plain reference in the same run (ratios, medians of alternating repeats).

    python -m benchmarks.run [--quick] [--only NAME]     # results in benchmarks/results/<name>.json

Names: throughput (engine vs reference loop, images/s, fraction of matmul peak), sweep (batched
stability sweep vs one process per run), fastpaths (one switch at a time), analysis (attention,
rollout, CKA: time and peak memory).
"""
