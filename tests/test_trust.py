"""A run or sweep folder is data: no code from it, no writes outside it, bounded work whatever it holds."""

import os
import pickle
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from analysis import config, rundir
from analysis.engine import data as D
from analysis.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent.parent / "analysis"


class Payload:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def write_cifar(folder: Path, protocol: int, n: int = 20, data=None) -> None:
    """A CIFAR-10 folder in the real python format: dicts of bytes keys, uint8 arrays, label lists."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": b"testing",
            b"labels": [i % 10 for i in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in D.CIFAR10_CLASSES], b"num_vis": 3072}, fh, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_the_real_cifar_format_still_loads(tmp_path, protocol):
    write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    test = D.load_arrays("cifar10", str(tmp_path), train=False)
    train = D.load_arrays("cifar10", str(tmp_path), train=True)
    assert test.images.shape == (20, 3, 32, 32) and len(train) == 100
    assert test.classes == D.CIFAR10_CLASSES and test.labels.tolist()[:3] == [0, 1, 2]


def test_a_cifar_payload_is_refused_with_one_line_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    write_cifar(tmp_path / "cifar", 2, data=Payload(marker))
    with pytest.raises(ConfigError) as e:
        D.load_arrays("cifar10", str(tmp_path / "cifar"), train=False)
    assert "refused" in one_line(e.value) and "posix.system" in str(e.value)
    assert not marker.exists()


def test_a_payload_in_the_meta_file_is_refused_too(tmp_path):
    marker = tmp_path / "marker"
    write_cifar(tmp_path / "cifar", 2)
    with open(tmp_path / "cifar" / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": Payload(marker)}, fh)
    with pytest.raises(ConfigError, match="refused"):
        D.load_arrays("cifar10", str(tmp_path / "cifar"), train=True)
    assert not marker.exists()


def test_a_pickle_of_another_shape_is_one_line(tmp_path):
    write_cifar(tmp_path / "cifar", 2)
    with open(tmp_path / "cifar" / "test_batch", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(ConfigError, match="not a CIFAR python batch"):
        D.load_arrays("cifar10", str(tmp_path / "cifar"), train=False)
    (tmp_path / "cifar" / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError) as e:
        D.load_arrays("cifar10", str(tmp_path / "cifar"), train=False)
    one_line(e.value)


def test_no_module_unpickles_outside_the_restricted_unpickler():
    """pickle is used only by analysis/trust.py; torch.load always with weights_only=True."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name != "trust.py":
            assert not re.search(r"pickle\.(load|loads|Unpickler)\b|import pickle|from pickle", text), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), (path, call.group(0))


def make_sweep(root: Path) -> Path:
    """A folder laid out like a sweep (spec.yaml, runs.json) holding one run folder."""
    (root / "runs" / "r0").mkdir(parents=True)
    (root / "spec.yaml").write_text("name: x\n")
    (root / "runs.json").write_text('{"runs": []}')
    return root / "runs" / "r0"


@pytest.mark.parametrize("where", ["run", "sweep"])
def test_a_data_root_inside_the_folder_being_read_is_refused(tmp_path, where):
    from analysis.runs import load_config

    run = make_sweep(tmp_path / "sweep")
    data_root = (run if where == "run" else tmp_path / "sweep") / "data"
    marker = tmp_path / "marker"
    write_cifar(data_root, 2, data=Payload(marker))
    cfg = config.RunConfig().replace({"data.name": "cifar10", "data.root": str(data_root)})
    (run / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(ConfigError) as e:
        load_config(run)
    assert "lies inside the folder being read" in one_line(e.value)
    assert not marker.exists()


def test_a_data_root_outside_the_folder_is_followed(tmp_path):
    from analysis.runs import load_config

    run = make_sweep(tmp_path / "sweep")
    cfg = config.RunConfig().replace({"data.name": "cifar10", "data.root": str(tmp_path / "data")})
    (run / "config.yaml").write_text(cfg.to_yaml())
    assert load_config(run).data.root == str(tmp_path / "data")


def plant_stem_sweep(root: Path, marker: Path) -> Path:
    """sweeps/evil under root holding a package whose import writes `marker`, and a run naming it."""
    sweep = root / "sweeps" / "evil"
    run = make_sweep(sweep)
    pkg = sweep / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom analysis.models.stems import Stem\nstem = Stem\n"
    )
    (root / "sweeps" / "__init__.py").write_text("")
    (sweep / "__init__.py").write_text("")
    return run


@pytest.mark.parametrize("trust_code", [False, True])
def test_a_stem_planted_in_the_sweep_is_never_imported(tmp_path, monkeypatch, trust_code):
    from analysis.runs import load_model

    marker = tmp_path / "marker"
    run = plant_stem_sweep(tmp_path, marker)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config.RunConfig().replace({"model.stem": "sweeps.evil.evilpkg:stem"})
    (run / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(ConfigError) as e:
        load_model(run, initial=True, trust_code=trust_code)
    text = one_line(e.value)
    assert "sweeps.evil.evilpkg:stem" in text
    assert ("lies inside the folder being read" if trust_code else "trust_code=True") in text
    assert not marker.exists()


def test_a_stem_import_path_is_imported_when_trusted(tmp_path):
    from analysis.runs import as_model, load_model

    cfg = config.RunConfig().replace({"model.stem": "tests.user_stems:two_conv"})
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(ConfigError, match="--trust-code"):
        as_model(tmp_path, initial=True)
    model = load_model(tmp_path, initial=True, trust_code=True)
    assert model.patch_embed.kind is not None


def test_the_report_command_takes_trust_code():
    from analysis.__main__ import parser

    assert parser().parse_args(["report", "sweeps/x", "--trust-code"]).trust_code is True
    assert parser().parse_args(["report", "sweeps/x"]).trust_code is False


def test_resubmitting_an_opened_sweep_imports_its_stems_only_when_trusted(tmp_path, monkeypatch):
    """Jobs import the stem a run names: an opened sweep's import paths need trust_code, and a stem
    whose module lies inside the sweep is refused even then (nothing launched, nothing imported)."""
    import json
    import sys

    from analysis.sweeps import Sweep

    spec = tiny_spec("evil")
    spec["base"]["model"] = {"stem": "tests.user_stems:two_conv"}
    made = Sweep.from_dict(spec, root=tmp_path / "sweeps")
    opened = Sweep.open(made.dir)
    for act in (opened.resubmit, opened.launch):
        with pytest.raises(ConfigError) as e:
            act()
        assert "tests.user_stems:two_conv" in one_line(e.value) and "--trust-code" in str(e.value)
    marker = tmp_path / "marker"
    pkg = made.dir / "evilpkg"  # sweeps/evil/evilpkg, importable from tmp_path
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nstem = None\n")
    for folder in (made.dir.parent, made.dir):
        (folder / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "sweeps" or m.startswith("sweeps.")]:  # another test's
        monkeypatch.delitem(sys.modules, name)
    table = json.loads((made.dir / "runs.json").read_text())
    for row in table["runs"]:
        row["overrides"]["model.stem"] = "sweeps.evil.evilpkg:stem"
    (made.dir / "runs.json").write_text(json.dumps(table))
    for run in made.run_ids:
        cfg = config.load(made.run_dir(run) / "config.yaml").replace({"model.stem": "sweeps.evil.evilpkg:stem"})
        (made.run_dir(run) / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(ConfigError) as e:
        Sweep.open(made.dir).resubmit(trust_code=True)
    assert "lies inside the folder being read" in one_line(e.value)
    with pytest.raises(ConfigError) as e:  # the job trains config.yaml: a stem planted there needs trust too,
        made.resubmit()  # even in a sweep made from the caller's own spec
    assert "config.yaml" in one_line(e.value) and "--trust-code" in str(e.value)
    assert not marker.exists() and made.launches == [] and not (made.dir / "code").exists()
    assert parser_args("sweep", "resubmit", "sweeps/x", "--trust-code").trust_code is True


def parser_args(*argv):
    from analysis.__main__ import parser

    return parser().parse_args(list(argv))


def tiny_spec(name="contained"):
    return {
        "name": name,
        "base": {
            "data": {"train_per_class": 5, "test_per_class": 2},
            "train": {"epochs": 1, "batch_size": 10, "precision": "fp32", "progress": "none"},
        },
        "grid": {"optimizer": ["adamw", "sgd"]},
        "launch": {"cluster": "local"},
    }


def files_under(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_resubmit_never_writes_through_a_symlinked_run_folder(tmp_path):
    from analysis.sweeps import Sweep

    sweep = Sweep.from_dict(tiny_spec(), root=tmp_path / "sweeps")
    run = sweep.run_dir(sweep.run_ids[0])
    elsewhere = tmp_path / "elsewhere"
    run.rename(elsewhere)
    run.symlink_to(elsewhere, target_is_directory=True)
    before = files_under(elsewhere)
    for act in (sweep.resubmit, sweep.launch):
        with pytest.raises(ConfigError) as e:
            act()
        assert str(run) in one_line(e.value) and "symbolic link" in str(e.value)
    with pytest.raises(ConfigError, match="symbolic link"):
        Sweep.from_dict(tiny_spec(), root=tmp_path / "sweeps")
    assert files_under(elsewhere) == before
    assert sweep.launches == [] and not (sweep.dir / "code").exists()


def test_a_symlinked_file_in_a_run_folder_is_refused(tmp_path):
    from analysis.sweeps import Sweep

    sweep = Sweep.from_dict(tiny_spec(), root=tmp_path / "sweeps")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    link = sweep.run_dir(sweep.run_ids[1]) / "metrics.jsonl"
    link.symlink_to(outside)
    with pytest.raises(ConfigError, match="metrics.jsonl is a symbolic link"):
        sweep.launch()
    assert outside.read_text() == "keep me"


def test_the_report_does_not_write_through_a_symlink(tmp_path):
    from analysis.report import write_report

    outside = tmp_path / "precious.html"
    outside.write_text("keep me")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "report.html").symlink_to(outside)
    with pytest.raises(ConfigError, match="report.html is a symbolic link"):
        write_report(sweep)
    assert outside.read_text() == "keep me"


BAD_RESULTS = {  # result.json text: words of the reason
    "nan": ('{"status": "completed", "top1_err": NaN}', "NaN is not a number"),
    "infinity": ('{"status": "completed", "top1_err": 5.0, "top5_err": -Infinity}', "Infinity is not a number"),
    "overflow": ('{"status": "completed", "top1_err": 1e400}', "is not a number"),
    "missing": ('{"status": "completed", "reason": null}', "no top1_err"),
    "string": ('{"status": "completed", "top1_err": "3.0"}', "top1_err is '3.0'"),
    "range": ('{"status": "completed", "top1_err": 150}', "top1_err is 150"),
    "status": ('{"status": "great", "top1_err": 1}', "status 'great'"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_a_bad_result_makes_the_run_failed_with_a_warning(tmp_path, case):
    from analysis.claims import claims_table
    from analysis.sweeps import Sweep, collect

    text, words = BAD_RESULTS[case]
    sweep = Sweep.from_dict(tiny_spec(), root=tmp_path)
    good, bad = (sweep.run_dir(r) for r in sweep.run_ids)
    (good / "result.json").write_text('{"status": "completed", "reason": null, "top1_err": 12.5, "top5_err": 1.0}')
    (bad / "result.json").write_text(text)
    with pytest.warns(UserWarning, match=re.escape(str(bad / "result.json"))):
        frame = collect(sweep.dir, scheduler=False, cache=False)
    row = frame.set_index("run").loc[bad.name]
    assert row["status"] == "failed" and words in row["reason"] and "invalid result.json" in row["reason"]
    assert np.isfinite(frame["error"].dropna()).all() and list(frame["error"].dropna()) == [12.5]
    claims_text = claims_table(frame).to_string()
    assert "inf" not in claims_text.lower().replace("info", "")


def test_bad_metrics_rows_are_skipped():
    lines = [
        '{"epoch": 0, "test_top1_err": 20.0}',
        '{"epoch": 1, "test_top1_err": NaN}',
        '{"epoch": 2, "test_top1_err": 101}',
        '{"epoch": -1}',
        '{"epoch": 3, "train_loss": Infinity}',
        '{"epoch": "4"}',
        "[1, 2]",
        '{"epoch": 5, "test_top1_err": 9.5}',
    ]
    assert sorted(rundir.metric_rows(lines)) == [0, 5]


def peak_mb(code: str, cwd: Path) -> tuple[float, str]:
    """Run code in a fresh interpreter; (its peak resident memory above the imports in MB, its output)."""
    import subprocess
    import sys

    script = (
        "import resource, analysis.sweeps, analysis.runs, analysis.report\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n{textwrap.indent(code, '    ')}\n"
        "except Exception as e:\n    print(type(e).__name__, str(e))\n"
        "print('PEAK', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peak = float(out.stdout.rsplit("PEAK", 1)[1])
    return peak, out.stdout


@pytest.mark.parametrize(
    "spec",
    [
        {"samples": 1_000_000, "sample": {"optim.lr": {"log_uniform": [1e-4, 1e-2]}}},
        {"grid": {"optim.lr": list(range(1, 1001)), "train.seed": list(range(1000))}},
    ],
)
def test_a_huge_spec_is_refused_before_anything_is_built(tmp_path, spec):
    peak, out = peak_mb(
        f"from analysis.sweeps import Sweep\nSweep.from_dict({{'name': 'big', **{spec!r}}}, root={str(tmp_path)!r})",
        tmp_path,
    )
    assert "ConfigError" in out and "over the limit of 10000 runs" in out or "over 10000 runs" in out, out
    assert peak < 200 and not (tmp_path / "big").exists()


def test_the_run_cap_can_be_raised(monkeypatch):
    from analysis.sweeps import Spec

    spec = {"name": "wide", "grid": {"train.seed": list(range(30))}}
    monkeypatch.setenv("STEMLAB_MAX_RUNS", "20")
    with pytest.raises(ConfigError, match="STEMLAB_MAX_RUNS"):
        Spec.from_dict(spec)
    monkeypatch.setenv("STEMLAB_MAX_RUNS", "30")
    assert Spec.from_dict(spec).count() == 30


BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    + "model: {preset: *i}\n"
)


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    (tmp_path / "config.yaml").write_text(BOMB)
    peak, out = peak_mb(f"from analysis.runs import load_model\nload_model({str(tmp_path)!r})", tmp_path)
    assert "ConfigError" in out and "aliases expand to over" in out, out
    assert peak < 100


def test_a_big_yaml_file_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {preset: vit_c_fmnist_tiny}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="over 1048576 bytes"):
        config.load(tmp_path / "config.yaml")


@pytest.mark.parametrize(
    "text, line",
    [
        ("optim: {lr: 0.1}\noptim: {wd: 0.1}\n", 2),  # a section twice: the first would vanish
        ("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 30\n", 4),
        ("base: &b {optim: {lr: 0.1}}\nother: {<<: *b, extra: 1}\n", None),  # a merge key is not a duplicate
    ],
)
def test_a_yaml_key_given_twice_is_refused(tmp_path, text, line):
    from analysis.trust import load_yaml

    (tmp_path / "config.yaml").write_text(text)
    if line is None:
        assert load_yaml(tmp_path / "config.yaml")["other"]["optim"] == {"lr": 0.1}
        return
    with pytest.raises(ConfigError) as e:
        load_yaml(tmp_path / "config.yaml")
    assert f"line {line}: key" in one_line(e.value) and "given twice" in str(e.value)


def test_a_huge_metrics_file_is_read_in_bounded_memory(tmp_path):
    from analysis.sweeps import Sweep

    sweep = Sweep.from_dict(tiny_spec(), root=tmp_path)
    run = sweep.run_dir(sweep.run_ids[0])
    (run / "result.json").write_text('{"status": "completed", "reason": null, "top1_err": 12.5}')
    row = '{"epoch": %d, "step": 1, "train_loss": 1.5, "test_top1_err": 20.0, "lr": 0.001, "pad": "%s"}\n'
    with open(run / "metrics.jsonl", "w") as f:
        block = "".join(row % (e, "x" * 100) for e in range(20_000))
        for _ in range(8):  # some 22 MB, over the 8 MiB read
            f.write(block)
    peak, out = peak_mb(
        f"import warnings; warnings.simplefilter('ignore')\n"
        f"from analysis.sweeps import Sweep, collect\nfrom analysis.plots import curves_figure\n"
        f"s = Sweep({str(sweep.dir)!r})\nprint(len(collect(s.dir, scheduler=False, cache=False)))\n"
        f"print(s.status()['epoch'].max())\n"
        f"fig = curves_figure([{str(run)!r}])\nprint('points', max(len(t.x) for t in fig.data))",
        tmp_path,
    )
    assert "points 2000" in out or "points 2001" in out, out
    assert peak < 400, out


def test_huge_logs_and_run_tables_are_read_in_bounded_memory(tmp_path):
    """A 1 GiB log (sparse: no disk used) in a failed run: status reads its tail only. A runs.json or
    launches.json over 16 MiB is refused with one line before it is parsed."""
    import subprocess

    from analysis.sweeps import Sweep

    sweep = Sweep.from_dict(tiny_spec(), root=tmp_path)
    run = sweep.run_dir(sweep.run_ids[0])
    (run / "result.json").write_text('{"status": "failed", "reason": "boom"}')
    ended = subprocess.Popen(["true"])  # its job: a local controller that ended
    ended.wait()
    sweep._save_launches([rundir.launch_record(0, "local", [(str(ended.pid), sweep.run_ids)], "", "submitit", {})])
    with open(run / "log.txt", "wb") as f:
        f.seek(1 << 30)
        f.write(b"\nthe last line of a long log\n")
    code = f"from analysis.sweeps import Sweep\nprint(Sweep({str(sweep.dir)!r}).status()['log_tail'].iloc[0])"
    peak, out = peak_mb(code, tmp_path)
    assert "the last line of a long log" in out and peak < 200, out
    (sweep.dir / "launches.json").write_bytes(b'{"launches": [' + b"1, " * (6 << 20) + b"1]}")
    peak, out = peak_mb(code, tmp_path)
    assert "ConfigError" in out and "launches.json: over 16777216 bytes" in out and peak < 200, out
    with open(sweep.dir / "runs.json", "ab") as f:
        f.truncate(1 << 30)
    peak, out = peak_mb(code, tmp_path)
    assert "runs.json: over 16777216 bytes" in out and peak < 200, out


def test_a_key_given_twice_is_refused():
    from analysis.__main__ import _launch_set

    with pytest.raises(ConfigError, match="optim.lr is given twice"):
        config.parse_overrides(["optim.lr=1e-3", "train.epochs=2", "optim.lr=2e-3"])
    with pytest.raises(ConfigError, match="partition is given twice"):
        _launch_set(["launch.partition=a", "partition=b"])


def test_os_errors_a_user_can_cause_are_one_line(tmp_path, capsys):
    from analysis.__main__ import main
    from analysis.sweeps import Sweep

    assert main(["train", "--out", str(tmp_path / "r"), "data.root=" + "d" * 300]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.root is longer than a file system allows" in err
    sweep = Sweep.from_dict(tiny_spec(), root=tmp_path)
    assert main(["sweep", "collect", str(sweep.dir), "--out", "/dev/full"]) == 2  # writing there: ENOSPC
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err


@pytest.mark.slow
def test_two_launches_of_one_spec_at_once_start_each_run_once(tmp_path):
    import subprocess
    import sys

    import yaml

    from analysis.sweeps import Sweep

    (tmp_path / "race.yaml").write_text(yaml.safe_dump(tiny_spec("race")))
    cmd = [sys.executable, "-m", "analysis", "sweep", "launch", str(tmp_path / "race.yaml"), "--root", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("Traceback" not in err for _, err in outs), outs
    sweep = Sweep(tmp_path / "race")
    sweep.wait(timeout=300)
    assert len(sweep.launches) == 1 and sorted(r for j in sweep.launches[0]["jobs"] for r in j["runs"]) == sorted(
        sweep.run_ids
    )
    assert [p.name for p in (sweep.dir / "code").iterdir()] == ["launch-000"]
    assert set(sweep.collect()["status"]) == {"completed"}
