"""``python -m course lab`` (what ``make lab`` runs): JupyterLab at lesson 00, anywhere.

Three situations a plain ``jupyter lab`` gets wrong:

- **as root** (containers, cloud GPU machines, workshop images) Jupyter refuses to start
  without ``--allow-root``; the course passes it and says why in one line;
- **no display** (a server, a cloud GPU over SSH) there is no browser to open: the course prints
  the address with its token, and the SSH command that tunnels it to a laptop;
- **the network**: the server listens on this machine only (127.0.0.1) unless the learner asks
  for another address with ``--ip``;
- **trust**: JupyterLab draws a stored widget (lesson 00's temperature slider and plot, lesson 05's
  labelling widget, lesson 07's arena and chat) only in a notebook that this user trusts; in any
  other it shows the widget's text repr, ``interactive(children=(FloatSlider(...``. Trust is a
  signature with a per-user key, so the build cannot ship it: the course signs its own notebooks
  (``jupyter trust``, into the user's Jupyter data folder) each time it starts the server.

This module uses the standard library only; Jupyter runs in the course's environment.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from course.environment import ROOT, VENV, venv_python

FIRST_LESSON = "lessons/00_start_here.ipynb"
DEFAULT_PORT = 8888
TRUSTED_FOLDERS = ("lessons", "solutions")  # the course's own notebooks, whose stored widgets should show


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def has_display() -> bool:
    """Can a browser open here? Always on macOS and Windows; on Linux only with a display server."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def free_port(ip: str = "127.0.0.1", start: int = DEFAULT_PORT, tries: int = 50) -> int:
    """The first port from ``start`` on that nothing listens on."""
    for port in range(start, start + tries):
        with socket.socket() as probe:
            try:
                probe.bind((ip if ip not in ("0.0.0.0", "") else "", port))
                return port
            except OSError:
                continue
    raise SystemExit(f"No free port between {start} and {start + tries - 1}: pass one with --port.")


def lab_command(python: Path, *, ip: str, port: int, token: str, as_root: bool, open_browser: bool,
                notebook: str = FIRST_LESSON) -> list[str]:
    """The ``jupyter lab`` command line for these settings."""
    command = [str(python), "-m", "jupyter", "lab", notebook, f"--ServerApp.root_dir={ROOT}",
               f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    if as_root:
        command.append("--allow-root")
    if not open_browser:
        command.append("--no-browser")
    return command


def course_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(p for folder in TRUSTED_FOLDERS for p in (root / folder).glob("*.ipynb"))


def trust_command(python: Path, notebooks: list[Path]) -> list[str]:
    """``jupyter trust`` for ``notebooks``: their stored widgets then render when opened, before any run."""
    return [str(python), "-m", "jupyter", "trust", *map(str, notebooks)]


def trust_course_notebooks(python: Path, root: Path = ROOT, env: dict | None = None) -> bool:
    """Sign the course's notebooks for this user; a failure only costs the widgets' pictures."""
    notebooks = course_notebooks(root)
    if not notebooks:
        return True
    done = subprocess.run(trust_command(python, notebooks), cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        print("Could not mark the course's notebooks trusted (`jupyter trust`): stored widgets show as text "
              "until you run their cells.", (done.stderr.strip().splitlines() or [""])[-1])
    return done.returncode == 0


def lesson_url(ip: str, port: int, token: str, notebook: str = FIRST_LESSON) -> str:
    host = "127.0.0.1" if ip in ("0.0.0.0", "", "127.0.0.1", "localhost") else ip
    return f"http://{host}:{port}/lab/tree/{notebook}?token={token}"


def tunnel_hint(port: int) -> str:
    """The command a learner runs on their laptop to reach this machine's server over SSH."""
    user = getpass.getuser()
    host = socket.gethostname()
    return f"ssh -N -L {port}:localhost:{port} {user}@{host}"


def main(ip: str = "127.0.0.1", port: int | None = None, open_browser: bool | None = None,
         venv: Path = VENV) -> int:
    python = venv_python(venv)
    if not os.path.lexists(python):  # lexists: a user who may run but not inspect its target is fine
        raise SystemExit("The course's environment is missing: run `python -m course setup` (or `make setup`) first.")
    port = port or free_port(ip)
    token = secrets.token_hex(24)
    as_root = running_as_root()
    open_browser = has_display() if open_browser is None else open_browser
    if as_root:
        print("Running as root (usual in containers and cloud machines): passing --allow-root to Jupyter.")
    url = lesson_url(ip, port, token)
    if not open_browser:
        print("No display here, so no browser opens. Open this address in a browser on this machine:")
        print(f"    {url}")
        if ip in ("127.0.0.1", "localhost"):
            print("From your laptop, first tunnel the port over SSH (then open the same address there):")
            print(f"    {tunnel_hint(port)}")
    trust_course_notebooks(python)
    print("Stop the server with Ctrl+C.", flush=True)
    command = lab_command(python, ip=ip, port=port, token=token, as_root=as_root, open_browser=open_browser)
    try:
        return subprocess.run(command, cwd=ROOT).returncode
    except KeyboardInterrupt:
        return 0
