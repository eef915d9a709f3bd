"""The three dependency lists (pyproject, requirements.txt, environment.yml) agree."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|=)\s*([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_pyproject_requirements_and_environment_name_the_same_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    pyproject = _pins(project["dependencies"] + optional["test"] + optional["tensorboard"])
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    environment = {k: v for k, v in _pins(conda + pip).items() if k not in ("python", "pip")}
    assert pyproject == requirements
    assert environment == requirements
