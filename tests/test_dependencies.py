"""environment.yml (conda route) and pyproject.toml (pip route) must list the same packages."""

import tomllib

import yaml

from course.manifest import ROOT


def pip_list_from_environment_yml() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_entries = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_entries) == 1, "environment.yml should have one pip: section"
    return [req for req in pip_entries[0]["pip"] if not req.startswith(("-e", "-c"))]


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert sorted(pip_list_from_environment_yml()) == sorted(pyproject["project"]["dependencies"])


def test_environment_yml_installs_the_course_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert "-c requirements.lock" in pip, "the conda route must install the locked versions too"
    assert any(str(d).startswith("python=3.1") for d in env["dependencies"])
