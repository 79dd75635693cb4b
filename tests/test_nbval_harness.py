"""The project's pytest setup (conftest.py) lets nbval survive a chatty, long cell.

nbval reads a cell's messages only once the cell has finished. Without the project's kernel
client, ZeroMQ dropped messages past its buffer (the cell's last ones among them) and nbval failed
the cell with "Timeout of 5 seconds exceeded waiting for output": lesson 04 did on a slow machine.
"""

import subprocess
import sys

import nbformat

from course.manifest import ROOT


def test_a_cell_that_sends_thirty_thousand_messages_passes(tmp_path):
    nb = nbformat.v4.new_notebook()
    flood = nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nfrom IPython.display import display\n"
                                      "for i in range(30_000):\n    display(i)", execution_count=1)
    after = nbformat.v4.new_code_cell("print('still here')", execution_count=2, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="still here\n")])
    nb.cells = [flood, after]
    path = tmp_path / "flood.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-current-env", "--nbval", "-p", "conftest",
                          "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), "-c", "/dev/null", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "2 passed" in run.stdout
