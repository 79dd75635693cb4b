"""``python -m course.screenshots``: what a learner sees of each widget when a lesson opens, before running.

Run it with the course's environment (it starts that environment's JupyterLab)::

    .venv/bin/python -m course.screenshots lessons/00_start_here.ipynb lessons/05_reward_modelling.ipynb \\
        lessons/07_beyond_ppo.ipynb -o /tmp/shots

For each notebook it finds the code cells whose stored outputs hold a widget view
(``application/vnd.jupyter.widget-view+json``), opens the notebook in JupyterLab in headless
Chromium, scrolls each such cell to the top of the window and saves ``DIR/<notebook>-cell<N>.png``.
It prints, per cell, what the output area shows: ``widget`` (the widget drew itself from the state
stored in the notebook), ``text fallback`` (the ``text/plain`` repr such as ``interactive(children=…``),
``error`` ("Error displaying widget") or ``empty``; it exits 1 unless every one is ``widget``.

No cell is run: opening a notebook starts its kernel, which stays idle. Nothing outside a scratch
folder changes: the notebooks are copied there, and Jupyter's config, data and runtime folders,
IPython's, and Chromium's profile all point into it. ``--untrusted`` skips ``jupyter trust`` (what
a notebook gets that nobody trusted; JupyterLab then shows only "safe" outputs, and a widget view is
not one, so it shows the text fallback).

Needs Chromium (``CHROMIUM`` or ``chromium``/``google-chrome`` on the PATH) and websocket-client
(a dependency of jupyter_server, so in the course's environment).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from course.lab import trust_command

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDTH, HEIGHT = 1280, 1400  # tall enough for lesson 07's arena (buttons, texts and tallies) in one shot
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def widget_cells(path: Path) -> list[int]:
    """Indices of the code cells whose stored outputs include a widget view."""
    nb = json.loads(path.read_text())
    return [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
            and any(WIDGET_VIEW in output.get("data", {}) for output in cell.get("outputs", []))]


def find_browser() -> str:
    for name in ((os.environ.get("CHROMIUM"),) if os.environ.get("CHROMIUM") else BROWSERS):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("No Chromium found: install it (Debian: apt-get install chromium) or set CHROMIUM=/path/to/it.")


def _wait(what: str, probe, timeout: float, interval: float = 0.5):
    """Call ``probe`` until it returns something truthy; that value, or SystemExit after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, RuntimeError):  # not up yet: refused, no file yet, page still loading
            value = None
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"Timed out after {timeout:.0f} s waiting for {what}.")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DevTools:
    """The few Chrome DevTools Protocol calls this needs, over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self.last_id = 0

    def call(self, method: str, **params):
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:  # events arrive in between; only the answer to this call matters
            message = json.loads(self.ws.recv())
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("exception", {}).get("description", result))
        return result["result"].get("value")

    def close(self):
        self.ws.close()


# JavaScript run in the JupyterLab page (started with --LabApp.expose_app_in_browser=True).
# ``currentWidget`` stays null in a headless window that never has focus, so find the panel by path.
JS_PANEL = """[...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === %(path)s)"""

JS_READY = """(() => {
  if (!window.jupyterapp) return null;
  const panel = %(panel)s;
  if (!panel || !panel.context.isReady || !panel.content || !panel.content.widgets) return null;
  window.jupyterapp.shell.collapseLeft();  // the file browser would take a fifth of the width
  return panel.content.widgets.length;
})()"""

JS_SCROLL = """(async () => {
  const notebook = (%(panel)s).content;
  notebook.activeCellIndex = %(index)d;
  await notebook.scrollToItem(%(index)d, 'start');
  notebook.widgets[%(index)d].node.scrollIntoView({block: 'start'});
  return true;
})()"""

JS_OUTPUT = """(() => {
  const cell = (%(panel)s).content.widgets[%(index)d];
  const area = cell.node.querySelector('.jp-OutputArea');
  if (!area) return {kind: 'empty', mimes: [], text: ''};
  const mimes = [...area.querySelectorAll('[data-mime-type]')].map(n => n.dataset.mimeType);
  const text = area.innerText.trim();
  const views = area.querySelectorAll('.jupyter-widgets').length;  // each drawn widget view has this class
  let kind = 'empty';
  if (text.includes('Error displaying widget')) kind = 'error';
  else if (views) kind = 'widget';
  else if (/^(interactive|VBox|HBox|Output)\\(/m.test(text)) kind = 'text fallback';
  return {kind, mimes, text: text.slice(0, 300), views, images: area.querySelectorAll('img').length,
          sliders: area.querySelectorAll('.widget-slider').length, buttons: area.querySelectorAll('button').length};
})()"""


class Session:
    """A scratch folder with the notebooks, a JupyterLab serving it and a headless Chromium on it."""

    def __init__(self, notebooks: list[Path], *, python: str = sys.executable, browser: str | None = None):
        self.python, self.browser_path = python, browser or find_browser()
        self.lab = self.browser = self.page = None
        self.scratch = Path(tempfile.mkdtemp(prefix="course-screenshots-"))
        self.root = self.scratch / "root"
        self.root.mkdir()
        self.notebooks = []
        for notebook in notebooks:
            copy = self.root / notebook.parent.name / notebook.name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy2(notebook, copy)
            self.notebooks.append(copy)
        home = self.scratch / "jupyter"
        self.env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
                    "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(self.scratch / "ipython"),
                    "MPLCONFIGDIR": str(self.scratch / "matplotlib")}

    def start(self) -> None:
        self.port, self.token = _free_port(), secrets.token_hex(16)
        command = [self.python, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.root_dir={self.root}",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", "--LabApp.expose_app_in_browser=True"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self.lab_log = open(self.scratch / "lab.log", "w")
        self.lab = subprocess.Popen(command, env=self.env, stdout=self.lab_log, stderr=subprocess.STDOUT)

        def lab_up():
            if self.lab.poll() is not None:
                raise SystemExit("JupyterLab stopped:\n" + (self.scratch / "lab.log").read_text()[-2000:])
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}",
                                          timeout=5).status == 200

        _wait("JupyterLab", lab_up, 120)

        profile = self.scratch / "chromium"
        command = [self.browser_path, "--headless=new", "--remote-debugging-port=0", "--remote-allow-origins=*",
                   f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars",
                   "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                   "--disable-background-networking", "--disable-dev-shm-usage", "--mute-audio", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses root
        self.browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = _wait("Chromium", lambda: (profile / "DevToolsActivePort").read_text().split("\n")[0], 60)
        targets = _wait("Chromium's page", lambda: [t for t in json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/json/list", timeout=5)) if t["type"] == "page"], 30)
        self.page = DevTools(targets[0]["webSocketDebuggerUrl"])
        self.page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                       mobile=False)

    def open(self, notebook: Path) -> int:
        """Open ``notebook`` alone in a fresh workspace; the number of cells once it is on screen."""
        relative = notebook.relative_to(self.root).as_posix()
        url = (f"http://127.0.0.1:{self.port}/lab/workspaces/{label(notebook)}/tree/{relative}"
               f"?reset&token={self.token}")
        self.panel = JS_PANEL % {"path": json.dumps(relative)}
        self.page.call("Page.navigate", url=url)
        return _wait(f"{relative} to open", lambda: self.page.evaluate(JS_READY % {"panel": self.panel}), 120)

    def shoot(self, index: int, destination: Path, settle: float = 3.0) -> dict:
        """Scroll cell ``index`` to the top, let its output draw, save a PNG; what the output area shows."""
        self.page.evaluate(JS_SCROLL % {"index": index, "panel": self.panel})
        probe = JS_OUTPUT % {"index": index, "view": WIDGET_VIEW, "panel": self.panel}
        deadline = time.monotonic() + 30  # a widget view draws asynchronously once its models load
        while (state := self.page.evaluate(probe))["kind"] == "empty" and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(settle)  # images inside the widget decode, the layout settles
        self.page.evaluate(JS_SCROLL % {"index": index, "panel": self.panel})
        state = self.page.evaluate(probe)
        png = self.page.call("Page.captureScreenshot", format="png")["data"]
        destination.write_bytes(base64.b64decode(png))
        return state

    def stop(self) -> None:
        if self.page:
            self.page.close()
        for process in (self.browser, self.lab):
            if process and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.lab:
            self.lab_log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def label(notebook: Path) -> str:
    """``00_start_here`` for a lesson, ``solutions-00_start_here`` for its solution (same file name)."""
    return notebook.stem if notebook.parent.name == "lessons" else f"{notebook.parent.name}-{notebook.stem}"


def describe(state: dict) -> str:
    counts = ", ".join(f"{state.get(k, 0)} {k}" for k in ("views", "sliders", "buttons", "images"))
    mimes = "/".join(sorted(set(state["mimes"])))
    return counts + (f"; {mimes} outputs" if mimes else "")


def screenshots(notebooks: list[Path], output: Path, *, trust: bool = True) -> list[tuple[Path, dict]]:
    """Screenshots of every widget cell of ``notebooks`` in ``output``; (png, what it shows) for each."""
    output.mkdir(parents=True, exist_ok=True)
    session, shots = Session(notebooks), []
    try:
        if trust:  # as `python -m course lab` does; the signatures go to the scratch JUPYTER_DATA_DIR
            subprocess.run(trust_command(Path(session.python), session.notebooks), env=session.env, check=True,
                           capture_output=True)
        session.start()
        for original, notebook in zip(notebooks, session.notebooks):
            cells = widget_cells(notebook)
            if not cells:
                print(f"{original}: no stored widget output", flush=True)
                continue
            session.open(notebook)
            for index in cells:
                png = output / f"{label(notebook)}-cell{index}.png"
                state = session.shoot(index, png)
                shots.append((png, state))
                print(f"{original} cell {index}: {state['kind']} ({describe(state)}) -> {png}", flush=True)
    finally:
        session.stop()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("screenshots"), help="folder for the PNGs")
    parser.add_argument("--untrusted", action="store_true", help="do not `jupyter trust` the notebooks first")
    args = parser.parse_args(argv)
    missing = [str(n) for n in args.notebooks if not n.is_file()]
    if missing:
        raise SystemExit(f"No such notebook: {', '.join(missing)}")
    shots = screenshots([n.resolve() for n in args.notebooks], args.output, trust=not args.untrusted)
    return 0 if shots and all(state["kind"] == "widget" for _, state in shots) else 1


if __name__ == "__main__":
    sys.exit(main())
