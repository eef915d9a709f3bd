"""Property-based tests: whatever a user types or a folder holds, the readers give a result or one
ConfigError line, never another exception, in bounded time."""

import json
import os
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from analysis import config, rundir, trust  # noqa: E402
from analysis.errors import ConfigError  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True), st.text(max_size=20)
)
data = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
config_keys = st.sampled_from([*config.RunConfig().flat(), "model", "optim.", "x.y", "train.nope", ""])


def one_line_or_result(fn, *args):
    """fn(*args), or None when it raises a one-line ConfigError; any other exception fails the test."""
    try:
        return fn(*args)
    except ConfigError as e:
        assert "\n" not in str(e), str(e)
        return None


@FAST
@given(
    st.lists(
        st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", config_keys, st.text(max_size=15))),
        max_size=6,
    )
)
def test_overrides(items):
    overrides = one_line_or_result(config.parse_overrides, items)
    if overrides is not None:
        assert len(overrides) == len(items)
        one_line_or_result(config.RunConfig().replace, overrides)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["model", "data", "optim", "train", "other"]),
        st.one_of(
            data,
            st.dictionaries(st.sampled_from([k.split(".")[1] for k in config.RunConfig().flat()]), scalars, max_size=5),
        ),
        max_size=4,
    )
)
def test_config_from_a_folder(d):
    cfg = one_line_or_result(config.from_dict, d)
    assert cfg is None or isinstance(cfg, config.RunConfig)


sampler = st.one_of(
    st.fixed_dictionaries({"log_uniform": st.lists(scalars, max_size=3)}),
    st.fixed_dictionaries({"choice": st.lists(scalars, max_size=3)}),
    data,
)
spec_values = {
    "name": st.one_of(st.text(max_size=12), scalars),
    "base": st.one_of(data, st.dictionaries(config_keys, scalars)),
    "grid": st.one_of(
        data,
        st.dictionaries(
            st.one_of(config_keys, st.sampled_from(["preset", "optimizer", "stem"])),
            st.lists(st.one_of(scalars, st.dictionaries(config_keys, scalars)), max_size=3),
            max_size=3,
        ),
    ),
    "sample": st.one_of(data, st.dictionaries(config_keys, sampler, max_size=2)),
    "samples": st.one_of(st.integers(-2, 10**7), scalars),
    "seed": scalars,
    "launch": data,
    "other": data,
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=spec_values))
def test_spec_expansion(d):
    from analysis.sweeps import Spec

    old = os.environ.get("STEMLAB_MAX_RUNS")
    os.environ["STEMLAB_MAX_RUNS"] = "50"  # any spec over 50 runs is one line, so every example is quick
    try:
        spec = one_line_or_result(Spec.from_dict, d)
    finally:
        os.environ.pop("STEMLAB_MAX_RUNS") if old is None else os.environ.__setitem__("STEMLAB_MAX_RUNS", old)
    assert spec is None or 1 <= len(spec.runs()) <= 50


@FAST
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(lambda d: json.dumps(d, default=str), data),
        st.sampled_from(
            [
                "a: &a [1, 2]\nb: [*a, *a]\n",
                "[[[[[[[[[[[[[[[[",
                "{a: !!python/object:os.system x}",
                "- &x a\n- *y\n",
                ": : :",
                "%YAML 9.9\n---\na",
            ]
        ),
    )
)
def test_yaml_of_a_folder(text):
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-{os.getpid()}.yaml"
    path.write_text(text)
    try:
        value = one_line_or_result(trust.load_yaml, path)
        if value is not None:
            one_line_or_result(config.from_dict, value)
    finally:
        path.unlink()


results = st.one_of(
    data,
    st.fixed_dictionaries(
        {"status": st.one_of(st.sampled_from(rundir.STATUSES), scalars)},
        optional={
            k: scalars
            for k in (
                "reason",
                "top1_err",
                "top5_err",
                "best_top1_err",
                "ema_top1_err",
                "epoch",
                "params",
                "seconds",
                "images_per_s",
            )
        },
    ),
)


@FAST
@given(
    st.one_of(
        st.builds(lambda d: json.dumps(d, default=str), results),
        st.text(max_size=100),
        st.sampled_from(['{"status": "completed", "top1_err": NaN}', '{"top1_err": 1e999}', "[]", "null"]),
    )
)
def test_result_schema(text):
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-run-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / rundir.RESULT).write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = rundir.read_result(folder)
    assert result is None or result["status"] in rundir.STATUSES
    if result is not None and result["status"] != "failed":
        assert rundir.result_problem(result) is None and 0 <= result["top1_err"] <= 100
    rows = rundir.metric_rows(text.splitlines())
    assert all(rundir.metric_row_ok(row) for row in rows.values())
