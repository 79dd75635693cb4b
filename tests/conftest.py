"""Shared fixtures: tests never touch a learner's artifacts folder.

A session-wide folder covers module-scoped fixtures (built once per test file); each test then
gets its own empty folder on top, unless it uses a module fixture's objects directly.
"""

import pytest


@pytest.fixture(scope="session", autouse=True)
def session_artifacts(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("session-artifacts")
        mp.setenv("RLHF_ARTIFACTS", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def isolated_artifacts(tmp_path, monkeypatch):
    folder = tmp_path / "artifacts"
    monkeypatch.setenv("RLHF_ARTIFACTS", str(folder))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    return folder
