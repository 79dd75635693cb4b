import json
import os
import subprocess
import sys
import textwrap

import pytest

from rlhf_helpers import artifacts


def write_weights(folder, progress):
    progress.reset(total=2)
    (folder / "weights.bin").write_bytes(b"\x01" * 1000)
    progress.update()
    (folder / "config.json").write_text(json.dumps({"width": 4}))
    progress.update()


def test_builds_once_then_reuses(isolated_artifacts, capsys):
    calls = []

    def build(folder, progress):
        calls.append(folder)
        write_weights(folder, progress)

    first = artifacts.fetch("toy", {"width": 4}, build, made_by="a test")
    assert "No 'toy' artifact" in capsys.readouterr().out  # the one-line note
    second = artifacts.fetch("toy", {"width": 4}, build, made_by="a test")
    assert first == second and len(calls) == 1
    assert first.parent.parent == isolated_artifacts
    assert (first / "weights.bin").read_bytes() == b"\x01" * 1000
    manifest = artifacts.verify(first, full=True)
    assert manifest["config"] == {"width": 4} and set(manifest["files"]) == {"weights.bin", "config.json"}


def test_keyed_by_configuration():
    a = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    b = artifacts.fetch("toy", {"width": 8}, write_weights, made_by="t")
    assert a != b
    assert artifacts.config_key({"a": 1, "b": 2}) == artifacts.config_key({"b": 2, "a": 1})
    assert {row.key for row in artifacts.list_artifacts()} == {a.name, b.name}


def test_location_follows_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(artifacts.ARTIFACTS_VAR, str(tmp_path / "elsewhere"))
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    assert path.is_relative_to(tmp_path / "elsewhere")


def test_interrupted_build_leaves_nothing_loadable():
    def interrupted(folder, progress):
        (folder / "weights.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # the learner pressed stop half-way

    with pytest.raises(KeyboardInterrupt):
        artifacts.fetch("toy", {"width": 4}, interrupted, made_by="t")
    assert not artifacts.exists("toy", {"width": 4})
    stage_dir = artifacts.path_for("toy", {"width": 4}).parent
    assert list(stage_dir.iterdir()) == []  # the temporary folder was removed
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    assert (path / "weights.bin").read_bytes() == b"\x01" * 1000


def test_process_killed_mid_write_then_rebuilds(isolated_artifacts):
    """A hard kill (no cleanup runs) half-way through writing: the cache must not load it."""
    script = textwrap.dedent("""
        import os
        from rlhf_helpers import artifacts
        def dies(folder, progress):
            (folder / "weights.bin").write_bytes(b"half")
            os._exit(9)
        artifacts.fetch("toy", {"width": 4}, dies, made_by="t")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 9
    stage_dir = artifacts.path_for("toy", {"width": 4}).parent
    leftovers = list(stage_dir.iterdir())
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    assert not artifacts.exists("toy", {"width": 4})
    assert artifacts.list_artifacts() == []
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    assert artifacts.verify(path, full=True)
    assert [p.name for p in stage_dir.iterdir()] == [path.name]  # stale temporaries cleaned


def test_damaged_artifact_is_moved_aside_and_rebuilt(capsys):
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    (path / "weights.bin").write_bytes(b"\x01" * 10)  # truncated by a full disk, say
    with pytest.raises(artifacts.ArtifactError, match="10 bytes, expected 1000"):
        artifacts.verify(path)
    again = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    out = capsys.readouterr().out
    assert again == path and "damaged" in out and "moved to" in out
    aside = [p for p in path.parent.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and (aside[0] / "weights.bin").read_bytes() == b"\x01" * 10  # kept, not deleted
    assert (again / "weights.bin").stat().st_size == 1000


def test_full_verify_detects_changed_bytes():
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    (path / "weights.bin").write_bytes(b"\x02" * 1000)  # same size, other content
    artifacts.verify(path)  # the cheap check passes...
    with pytest.raises(artifacts.ArtifactError, match="SHA-256"):
        artifacts.verify(path, full=True)  # ...the full one does not


@pytest.mark.parametrize("steps", [10, 3_000, 100_000])
def test_progress_bar_refreshes_a_bounded_number_of_times_however_slow(steps, monkeypatch):
    """Each notebook refresh is a Jupyter message: a long build must not send thousands."""
    bar = artifacts.ProgressBar(total=5, disable=False, mininterval=0.0, file=open(os.devnull, "w"))
    refreshes = []
    monkeypatch.setattr(bar, "refresh", lambda *a, **k: refreshes.append(bar.n))
    bar.reset(total=steps)  # builders reset the bar to their own number of steps
    for _ in range(steps):
        bar.update()
    bar.close()
    assert bar.n == steps
    assert len(refreshes) <= artifacts.ProgressBar.REFRESHES + 1
    assert len(refreshes) >= min(steps, artifacts.ProgressBar.REFRESHES) - 1, "the bar must still move"
