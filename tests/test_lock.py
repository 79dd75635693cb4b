"""requirements.lock: every dependency held at one tested release, installed by every route."""

import os
from importlib import metadata

import pytest
import tomllib
from packaging.requirements import Requirement

from course import lock
from course.manifest import ROOT


def pyproject_requirements() -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]


def test_the_lock_pins_every_dependency_within_its_bounds():
    pins = lock.read_lock()
    for req in pyproject_requirements():
        name = lock.normalise(req.name)
        assert name in pins, f"{req.name} is a dependency but requirements.lock does not pin it: run make lock"
        assert req.specifier.contains(pins[name]), f"the lock's {name}=={pins[name]} is outside {req}"


def test_the_lock_holds_no_local_builds_and_no_cuda_runtime():
    text = lock.LOCK_FILE.read_text()
    assert "+cpu" not in text and "+cu" not in text, "each machine must take its own build of the release"
    assert not [name for name in lock.read_lock() if name.startswith("nvidia-") or name == "triton"]
    assert lock.lock_text(text) == text, "the lock is not in the form `make lock` writes"


def test_lock_text_normalises_pip_freeze():
    freeze = "Torch==2.13.0+cpu\nnvidia-cublas==13.1.0\ntriton==3.5.0\nzope.interface==7.0\nAAA_b==1.0\n"
    body = lock.lock_text(freeze).removeprefix(lock.HEADER)
    assert body == "aaa-b==1.0\ntorch==2.13.0\nzope-interface==7.0\n"
    with pytest.raises(ValueError, match="only name==version"):
        lock.lock_text("mypkg @ file:///home/me/mypkg\n")


def test_differences_name_each_package_that_moved():
    pins = {"torch": "2.13.0", "trl": "1.16.0"}
    assert lock.differences("torch==2.13.0+cpu\ntrl==1.17.0\n", pins) == ["trl: 1.16.0 -> 1.17.0"]
    assert lock.differences("torch==2.13.0\ntrl==1.16.0\n", pins) == ["none: the lock is current"]


def test_make_setup_runs_the_one_recipe_of_course_setup():
    """That recipe installs from the lock: tests/test_lab.py checks its commands."""
    setup_recipe = (ROOT / "Makefile").read_text().split("$(STAMP): pyproject.toml $(LOCK)")[1].split("\n\n")[0]
    assert "-m course setup" in setup_recipe and "pip install" not in setup_recipe


@pytest.mark.skipif(os.environ.get("RLHF_UNLOCKED") == "1", reason="make test-latest runs on the newest releases")
def test_this_environment_is_the_locked_one():
    pins = lock.read_lock()
    for req in pyproject_requirements():
        installed = metadata.version(req.name).split("+")[0]
        assert installed == pins[lock.normalise(req.name)], (
            f"{req.name} {installed} is installed but the lock says {pins[lock.normalise(req.name)]}: run make setup")


def test_the_readme_names_the_locked_versions():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- tested-versions")[1].split("<!-- /tested-versions -->")[0]
    pins = lock.read_lock()
    named = {}
    for line in [line for line in table.splitlines() if line.startswith("|")][2:]:  # past the header
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        named.update({cells[i]: cells[i + 1] for i in (0, 3)})
    assert {"torch", "transformers", "trl", "peft"} <= set(named)
    for package, version in named.items():
        assert pins[lock.normalise(package)] == version, f"README says {package} {version}, the lock {pins[package]}"
