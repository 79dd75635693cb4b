"""Shared fixtures: tests never touch a learner's artifacts folder.

A folder per test file covers module-scoped fixtures (built once per file); each test then gets
its own empty folder on top. Module scope matters: a session-wide setting would still be in force
while nbval runs the notebooks, which must use the course's own artifacts folder as a learner does.
"""

import pytest


@pytest.fixture(scope="module", autouse=True)
def module_artifacts(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("module-artifacts")
        mp.setenv("RLHF_ARTIFACTS", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def isolated_artifacts(tmp_path, monkeypatch):
    folder = tmp_path / "artifacts"
    monkeypatch.setenv("RLHF_ARTIFACTS", str(folder))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread: a second one only adds synchronisation, and on a busy
    2-core machine it can make them many times slower. Use with ``pytest.mark.usefixtures``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
