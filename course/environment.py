"""The course's own virtual environment: ``python -m course setup`` (what ``make setup`` runs).

One recipe for every machine, with or without ``make`` (Windows has none):

1. create ``.venv`` with the Python running this (3.11 or newer);
2. install torch, then the course, both at the versions in ``requirements.lock`` (pip
   constraints: see ``course/lock.py``); torch goes first so that the rest keeps its build;
3. register the environment as the Jupyter kernel *Python 3 (RLHF course)*;
4. write JupyterLab settings into the environment (not the learner's own settings): no news
   pop-up over lesson 00, no update check (the course works offline);
5. mark the environment current. Nothing is redone until ``pyproject.toml`` or the lock changes.

This module uses the standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
KERNEL_NAME = "rlhf-course"
KERNEL_DISPLAY_NAME = "Python 3 (RLHF course)"
MIN_PYTHON = (3, 11)
# JupyterLab's own setting names (apputils-extension:notification); "false" is "Never".
LAB_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@contextlib.contextmanager
def environment_variables(values: dict[str, str]):
    """Set ``values`` in ``os.environ`` for the block; afterwards every variable is as it was
    before, including any the block itself set."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def venv_python(venv: Path = VENV) -> Path:
    """The environment's interpreter: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _stamp(venv: Path) -> Path:
    return venv / ".installed"


def is_current(venv: Path = VENV) -> bool:
    """True when the environment was set up after the last change to its inputs."""
    stamp = _stamp(venv)
    return stamp.exists() and all(stamp.stat().st_mtime >= f.stat().st_mtime for f in (ROOT / "pyproject.toml", LOCK))


def install_commands(venv: Path = VENV, torch_index: str = "", wheels: Path | None = None, *,
                     latest: bool = False, torch_spec: str = "torch") -> list[list[str]]:
    """The pip and ipykernel commands of steps 2 and 3, in order.

    With ``wheels`` (a folder from ``python -m course wheelhouse``) pip reads that folder alone
    (``--no-index``): a workshop installs thirty laptops with no network at all. With ``latest``
    the lock is ignored and every package upgraded to its newest release (``make test-latest``).
    """
    py = str(venv_python(venv))
    source = ["--no-index", "--find-links", str(wheels)] if wheels else shlex.split(torch_index)
    versions = ["--upgrade", "--upgrade-strategy", "eager"] if latest else ["-c", str(LOCK)]
    return [
        [py, "-m", "pip", "install", "--quiet", *versions, torch_spec, *source],
        [py, "-m", "pip", "install", "--quiet", *versions, "-e", str(ROOT), *(source if wheels else [])],
        [py, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
         "--display-name", KERNEL_DISPLAY_NAME],
    ]


def write_lab_settings(venv: Path = VENV) -> Path:
    """JupyterLab reads ``share/jupyter/lab/settings/overrides.json`` under its own prefix."""
    path = venv / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(LAB_OVERRIDES, indent=2) + "\n")
    return path


def check_python(version: tuple = sys.version_info[:2]) -> None:
    if tuple(version) < MIN_PYTHON:
        raise SystemExit(f"The course needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is "
                         f"{'.'.join(map(str, version))}. Install it, then run that Python: "
                         "python3.11 -m course setup (or make PYTHON=python3.11 setup).")


def _pip_environment(wheels: Path | None) -> dict[str, str]:
    """From a wheelhouse, pip reads no configuration file: no index or link folder set elsewhere."""
    return {**os.environ, "PIP_CONFIG_FILE": os.devnull} if wheels else dict(os.environ)


def setup(venv: Path = VENV, torch_index: str = "", force: bool = False, wheels: Path | None = None, *,
          latest: bool = False, torch_spec: str = "torch") -> Path:
    """Create or update the environment; return its interpreter. Quick when already current.

    ``latest`` and ``torch_spec`` are for ``make test-latest``: the newest releases, not the lock."""
    check_python()
    if wheels and not Path(wheels).is_dir():
        raise SystemExit(f"No wheelhouse folder at {wheels}: make one with `python -m course wheelhouse`.")
    if is_current(venv) and not force:
        print(f"Environment up to date in {venv.name}.")
        return venv_python(venv)
    if not venv_python(venv).exists():
        print(f"Creating {venv.name} with Python {sys.version.split()[0]}...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for command in install_commands(venv, torch_index, wheels, latest=latest, torch_spec=torch_spec):
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, env=_pip_environment(wheels),
                       stdout=subprocess.DEVNULL if "ipykernel" in command else None)
    write_lab_settings(venv)
    _stamp(venv).touch()
    print(f"Environment ready in {venv.name}. Next: python -m course lab (or make lab).")
    return venv_python(venv)


def requirements() -> list[str]:
    """The course's direct dependencies (pyproject.toml), and what building the course itself needs."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return pyproject["build-system"]["requires"] + pyproject["project"]["dependencies"]


def wheelhouse_commands(folder: Path, platforms: list[str] = ()) -> list[list[str]]:
    """``pip download`` commands that fill ``folder`` with every wheel an offline install needs.

    Without ``platforms``, for this machine. Otherwise one sub-folder per pip platform tag (for
    example ``manylinux_2_28_x86_64``, ``macosx_11_0_arm64``, ``win_amd64``), each resolved for
    that platform at the locked versions (a package only Windows needs is fetched for Windows).
    """
    base = [sys.executable, "-m", "pip", "download", "--quiet", "-c", str(LOCK), "--only-binary=:all:"]
    if not platforms:
        return [base + ["-d", str(folder), *requirements()]]
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    return [base + ["-d", str(folder / tag), "--platform", tag, "--python-version", version,
                    "--implementation", "cp", *requirements()] for tag in platforms]


def test_command(venv: Path = VENV, paths: tuple[str, ...] = ("tests", "lessons", "solutions")) -> list[str]:
    """What ``make test`` runs: every test, the notebooks under nbval included."""
    return [str(venv_python(venv)), "-m", "pytest", "--nbval", *paths]


def run_tests(venv: Path = VENV, paths: tuple[str, ...] = ("tests", "lessons", "solutions")) -> int:
    """Run ``test_command`` offline from the course folder; return pytest's exit code."""
    return subprocess.run(test_command(venv, paths), cwd=ROOT, env={**os.environ, **OFFLINE}).returncode
