"""Run a notebook top to bottom in the course's own Python environment.

Used by ``course build`` (to store fresh outputs) and ``course bench`` (to time each lesson).
The kernel is the interpreter running this code, as ``pytest --nbval-current-env`` does, so
building and testing always use the same environment whatever kernels are installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from course.environment import KERNEL_DISPLAY_NAME, KERNEL_NAME, environment_variables

_CURRENT_ENV = "_course_current_env"


class _CurrentEnvSpecs(KernelSpecManager):
    """Resolve one extra kernel name to an ipykernel running on ``sys.executable``."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name == _CURRENT_ENV:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=KERNEL_DISPLAY_NAME, language="python")
        return super().get_kernel_spec(kernel_name)


def course_kernelspec() -> dict:
    """The notebook metadata that makes JupyterLab pick the course's kernel."""
    return {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}


def execute(nb: nbformat.NotebookNode, workdir: Path, *, timeout: int = 1200, env: dict | None = None) -> nbformat.NotebookNode:
    """Execute ``nb`` in place with ``workdir`` as the kernel's working directory.

    ``env`` adds environment variables for the kernel. Cells tagged ``raises-exception`` may
    raise; any other error stops the run with nbclient's ``CellExecutionError``.
    """
    with environment_variables(env or {}):
        km = KernelManager(kernel_name=_CURRENT_ENV, kernel_spec_manager=_CurrentEnvSpecs())
        client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": str(workdir)}})
        try:
            client.execute(cwd=str(workdir))
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)  # nbclient leaves a kernel it did not start running
    nb.metadata["kernelspec"] = course_kernelspec()
    return nb
