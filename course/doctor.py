"""``python -m course doctor``: is this machine ready for the course?"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "tokenizers", "tiktoken",
             "sentencepiece", "safetensors", "jupyterlab", "ipywidgets", "nbval", "matplotlib")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "MISSING"


def _kernel_status() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    from course.environment import KERNEL_NAME

    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL_NAME in specs:
        return f"{KERNEL_NAME} (installed)"
    return f"{KERNEL_NAME} NOT installed: run `make setup`"


def _offline_status() -> tuple[bool, str]:
    """Load what the lessons need with every network connection refused."""
    from rlhf_helpers import data
    from rlhf_helpers.env import network_blocked
    from rlhf_helpers.tokenizers import get_encoding

    try:
        with network_blocked():
            summary = data.corpus_summary()
            ids = [get_encoding(name).encode("hello world") for name in ("cl100k_base", "o200k_base")]
            import transformers  # noqa: F401  (the import alone must not reach the hub)
    except Exception as err:  # report, never crash the doctor
        return False, f"FAILED with the network blocked: {type(err).__name__}: {err}"
    return True, f"OK with the network blocked (corpus: {summary.speeches:,} speeches; cl100k/o200k 'hello world' -> {ids[0]}, {ids[1]})"


def report() -> tuple[bool, list[tuple[str, str]]]:
    """(everything fine?, rows of the report)."""
    from rlhf_helpers import env
    from rlhf_helpers.artifacts import artifacts_dir, display_path, list_artifacts

    rows = [("python", f"{platform.python_version()} ({display_path(sys.executable)})")]
    rows += [(name, _version(name)) for name in LIBRARIES]
    ok = all(value != "MISSING" for _, value in rows)
    try:
        profile = env.get_profile()
        rows.append(("profile", f"{profile.name}: {profile.description}"))
        rows.append(("device", str(env.get_device())))
    except env.CourseConfigError as err:
        ok = False
        rows.append(("profile/device", f"ERROR: {err}"))
    import torch

    rows.append(("torch threads", str(torch.get_num_threads())))
    rows.append(("hub access", "allowed (RLHF_ALLOW_HUB=1)" if env.hub_allowed() else "off (offline by default)"))
    offline_ok, offline = _offline_status()  # first: it may build the corpus artifact
    rows.append(("artifacts", f"{display_path(artifacts_dir())} ({len(list_artifacts())} built)"))
    kernel = _kernel_status()
    rows.append(("kernel", kernel))
    rows.append(("network", offline))
    return ok and offline_ok and "NOT" not in kernel, rows


def main() -> int:
    ok, rows = report()
    width = max(len(name) for name, _ in rows)
    print("RLHF from scratch: environment report")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("All good: open the course with `make lab`." if ok else "Some checks failed: see above.")
    return 0 if ok else 1
