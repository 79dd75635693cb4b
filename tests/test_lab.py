"""The first five minutes: `make lab` and `python -m course lab` serve lesson 00, as root or not.

The server tests start a real JupyterLab on a free port of 127.0.0.1, read the address the
course prints (no display here, so no browser opens), fetch lesson 00 through it, and stop it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from course import environment, lab
from course.manifest import ROOT

URL = re.compile(r"http://127\.0\.0\.1:(\d+)/lab/tree/\S+\?token=\w+")


# ---- the command lines, without starting anything ------------------------------------------

def test_root_gets_allow_root_and_everyone_gets_localhost_only():
    args = dict(ip="127.0.0.1", port=8888, token="t", open_browser=True)
    as_root = lab.lab_command(Path("py"), as_root=True, **args)
    as_user = lab.lab_command(Path("py"), as_root=False, **args)
    assert "--allow-root" in as_root and "--allow-root" not in as_user
    assert "--ServerApp.ip=127.0.0.1" in as_user and "--no-browser" not in as_user
    assert "--no-browser" in lab.lab_command(Path("py"), as_root=False, **{**args, "open_browser": False})


def test_headless_linux_has_no_display(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not lab.has_display()
    monkeypatch.setenv("DISPLAY", ":0")
    assert lab.has_display()


def test_the_printed_address_and_tunnel_name_the_same_port():
    assert lab.lesson_url("0.0.0.0", 8890, "abc") == "http://127.0.0.1:8890/lab/tree/lessons/00_start_here.ipynb?token=abc"
    assert lab.tunnel_hint(8890).startswith("ssh -N -L 8890:localhost:8890 ")


def test_free_port_skips_a_port_in_use():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert lab.free_port(start=port) != port


def test_the_course_trusts_its_own_notebooks_so_their_stored_widgets_show(tmp_path):
    """Untrusted, JupyterLab shows a stored widget as its text repr (course/screenshots.py shows both)."""
    import nbformat
    from nbformat.sign import NotebookNotary

    (tmp_path / "lessons").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "lessons" / "00_x.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), tmp_path / "elsewhere.ipynb")
    assert lab.course_notebooks(tmp_path) == [tmp_path / "lessons" / "00_x.ipynb"]
    data = tmp_path / "jupyter-data"  # the user's signature database, here a scratch one
    assert lab.trust_course_notebooks(Path(sys.executable), root=tmp_path,
                                      env={**os.environ, "JUPYTER_DATA_DIR": str(data)})
    notary = NotebookNotary(data_dir=str(data))
    assert notary.check_signature(nbformat.read(tmp_path / "lessons" / "00_x.ipynb", as_version=4))
    assert not notary.check_signature(nbformat.read(tmp_path / "elsewhere.ipynb", as_version=4))


def test_the_screenshot_script_finds_every_stored_widget():
    from course.screenshots import widget_cells

    found = {name: len(widget_cells(ROOT / "lessons" / name)) for name in
             ("00_start_here.ipynb", "05_reward_modelling.ipynb", "07_beyond_ppo.ipynb")}
    assert found == {"00_start_here.ipynb": 1, "05_reward_modelling.ipynb": 1, "07_beyond_ppo.ipynb": 2}


# ---- the environment recipe ------------------------------------------------------------------

def test_setup_installs_from_the_lock_and_registers_the_kernel(tmp_path):
    commands = environment.install_commands(tmp_path / "venv", torch_index="--index-url https://example.invalid/cpu")
    pips = [c for c in commands if "pip" in c]
    assert len(pips) == 2 and all(["-c", str(environment.LOCK)] == c[5:7] for c in pips)
    assert pips[0][-3:] == ["torch", "--index-url", "https://example.invalid/cpu"], "torch first, from its index"
    assert commands[-1][1:4] == ["-m", "ipykernel", "install"] and environment.KERNEL_NAME in commands[-1]


def test_lab_settings_switch_off_the_news_popup_in_the_course_environment_only(tmp_path):
    path = environment.write_lab_settings(tmp_path / "venv")
    assert path.is_relative_to(tmp_path / "venv")
    notification = json.loads(path.read_text())["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}


def test_an_old_python_gets_one_clear_message():
    with pytest.raises(SystemExit, match="needs Python 3.11 or newer; this is 3.9"):
        environment.check_python((3, 9))
    environment.check_python((3, 11))


def test_the_environment_is_stale_after_the_lock_changes(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    venv.mkdir()
    assert not environment.is_current(venv)
    (venv / ".installed").touch()
    assert environment.is_current(venv)
    inputs = (ROOT / "pyproject.toml", environment.LOCK)
    past = min(f.stat().st_mtime for f in inputs) - 60  # before the last change to the inputs
    os.utime(venv / ".installed", (past, past))
    assert not environment.is_current(venv), "a lock newer than the stamp must trigger a reinstall"


def test_course_setup_is_quick_when_current():
    if not environment.is_current():
        pytest.skip("the course environment is not set up here")
    run = subprocess.run([sys.executable, "-m", "course", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "up to date" in run.stdout


# ---- real servers ----------------------------------------------------------------------------

def _as_nobody(home: Path) -> list[str]:
    """Run as the unprivileged user ``nobody``, who owns only ``home``.

    One capability is kept, to look up files: the environment under test is root's, and its
    interpreter may live under /root (pyenv), which no other user can enter. Jupyter's check is
    the user id, which is nobody's.
    """
    shutil.chown(home, user="nobody", group="nogroup")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


def _serve_and_fetch(command: list[str], home: Path) -> str:
    """Start ``command``, wait for the printed address, fetch it, stop the server; return its output."""
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(HOME=str(home), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = URL.search(line)
            url = match and match.group(0)
        assert url, "no address printed:\n" + "".join(lines)
        while "Stop the server" not in lines[-1] and time.monotonic() < deadline:
            lines.append(server.stdout.readline())
        while time.monotonic() < deadline:  # the address is printed before the server listens
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200
                    assert "JupyterLab" in response.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the server never answered:\n" + "".join(lines))
        port = int(URL.search(url).group(1))
        if shutil.which("ss") is None:
            return "".join(lines)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening and all(" 127.0.0.1:" in row for row in listening.splitlines()), listening
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    return "".join(lines)


needs_environment = pytest.mark.skipif(not environment.venv_python().exists(), reason="no course environment")
needs_root = pytest.mark.skipif(not lab.running_as_root(), reason="needs root, to run as root and as nobody")


@needs_environment
@needs_root
@pytest.mark.parametrize("launcher", ["make", "python"])
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_lab_serves_lesson_00_as_root_and_as_a_normal_user(launcher, user, tmp_path):
    if launcher == "make" and shutil.which("make") is None:
        pytest.skip("no make here")
    port = lab.free_port(start=18888)
    # The quotes make `make` run the recipe through the shell: make's own direct exec checks
    # access by user id alone, and refuses the interpreter that the capability above reaches.
    command = (["make", "--no-print-directory", "lab", f'LAB_ARGS=--port "{port}"'] if launcher == "make"
               else [str(environment.venv_python()), "-m", "course", "lab", "--port", str(port)])
    prefix = _as_nobody(tmp_path) if user == "nobody" else []
    output = _serve_and_fetch(prefix + command, tmp_path)
    assert ("--allow-root" in output) == (user == "root"), output
    assert "ssh -N -L" in output, "with no display the tunnel command is printed"


def test_a_wheelhouse_install_reads_that_folder_alone(tmp_path):
    commands = environment.install_commands(tmp_path / "venv", torch_index="--index-url https://x.invalid",
                                            wheels=tmp_path / "wheels")
    for pip in [c for c in commands if "pip" in c]:
        assert pip[-3:] == ["--no-index", "--find-links", str(tmp_path / "wheels")] and "https://x.invalid" not in pip
    assert environment._pip_environment(tmp_path)["PIP_CONFIG_FILE"] == os.devnull, "no index from pip's config"
    with pytest.raises(SystemExit, match="No wheelhouse folder"):
        environment.setup(tmp_path / "venv", wheels=tmp_path / "missing", force=True)


def test_the_wheelhouse_holds_what_building_the_course_needs_per_platform(tmp_path):
    here, = environment.wheelhouse_commands(tmp_path)
    assert "--platform" not in here and "setuptools>=68" in here and "trl>=1.16" in here
    linux, windows = environment.wheelhouse_commands(tmp_path, ["manylinux_2_28_x86_64", "win_amd64"])
    assert linux[linux.index("-d") + 1] == str(tmp_path / "manylinux_2_28_x86_64")
    assert windows[windows.index("--platform") + 1] == "win_amd64" and "--only-binary=:all:" in windows
    assert all(c[c.index("-c") + 1] == str(environment.LOCK) for c in (here, linux, windows))


def test_the_latest_environment_ignores_the_lock_but_registers_the_kernel_too(tmp_path):
    commands = environment.install_commands(tmp_path / "venv", latest=True, torch_spec="torch>=2.4")
    pips = [c for c in commands if "pip" in c]
    assert all("-c" not in c and c[5:8] == ["--upgrade", "--upgrade-strategy", "eager"] for c in pips)
    assert pips[0][8] == "torch>=2.4" and commands[-1][1:4] == ["-m", "ipykernel", "install"]
