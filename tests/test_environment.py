"""The dependency lists agree: pyproject.toml gives ranges, requirements.txt and environment.yml
pin exact versions inside them."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|=)\s*([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def _ranges() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + optional["test"] + optional["tensorboard"]]
    return {r.name.lower(): r for r in reqs}


def test_pyproject_gives_ranges_and_the_pins_lie_inside_them():
    ranges = _ranges()
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert set(ranges) == set(requirements)
    exact = [name for name, r in ranges.items() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert exact == [], f"exact pins belong in requirements.txt, not pyproject.toml: {exact}"
    outside = {
        name: (requirements[name], str(r.specifier))
        for name, r in ranges.items()
        if not r.specifier.contains(requirements[name], prereleases=True)
    }
    assert outside == {}
    assert ranges["torch"].specifier.contains("2.4.0") and ranges["submitit"].specifier.contains("1.5.4")
    assert not ranges["submitit"].specifier.contains("1.6.0")  # local.py relies on 1.5's private LocalExecutor


def test_requirements_and_environment_name_the_same_pins():
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    environment = {k: v for k, v in _pins(conda + pip).items() if k not in ("python", "pip")}
    assert environment == requirements
