import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhf_helpers import artifacts

ROOT = Path(__file__).resolve().parents[1]


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


# --------------------------------------------------------------- several processes, one artifact
#
# Each racer is a real Python process running RACER below. Its stdout and stderr go to files in a
# shared folder, so that a racer (and the test) can read what the others have printed so far.
# The build does not finish until every other racer is "inside": building too, or printing that
# it waits. That makes each race deterministic, however late a process starts on a busy machine.

RACER = textwrap.dedent(r"""
    import contextlib, os, sys, time, types
    from pathlib import Path

    # The artifact cache alone, without the package's __init__ (which imports torch): each racer
    # then starts in a tenth of a second.
    package = types.ModuleType("rlhf_helpers")
    package.__path__ = [os.path.join(os.environ["COURSE_ROOT"], "rlhf_helpers")]
    sys.modules["rlhf_helpers"] = package
    from rlhf_helpers import artifacts

    me, mode, others = sys.argv[1], sys.argv[2], sys.argv[3:]
    shared = Path(os.environ["RACE_DIR"])

    def inside(name):
        out = shared / f"out-{name}.txt"
        waits = out.exists() and "Waiting for another process" in out.read_text()
        return waits or (shared / f"started-{name}").exists()

    def build(folder, progress):
        (shared / f"started-{me}").touch()
        with open(shared / "builds.txt", "a") as f:
            f.write(me + "\n")
        deadline = time.monotonic() + 20
        while not all(inside(other) for other in others) and time.monotonic() < deadline:
            time.sleep(0.02)
        progress.reset(total=2)
        (folder / "weights.bin").write_bytes(b"\x01" * 1000)
        progress.update()
        if mode == "crash":
            os._exit(9)  # no cleanup runs: as a kill, a segfault or an out-of-memory kill
        if mode == "hang":
            time.sleep(60)
        time.sleep(0.2)  # the folder is half-written for a while
        (folder / "config.json").write_text("{}")
        progress.update()

    if mode == "no-lock":  # the control: what fetch does without its lock
        artifacts._artifact_lock = lambda *args, **kwargs: contextlib.nullcontext(False)
    path = artifacts.fetch("toy", {"width": 4}, build, made_by="a test", together=mode == "together")
    artifacts.verify(path, full=True)
    assert (path / "weights.bin").read_bytes() == b"\x01" * 1000 and (path / "config.json").read_text() == "{}"
    print("FOLDER", path, flush=True)
""")



@pytest.fixture
def race(tmp_path, isolated_artifacts):
    """Start racers with ``race.start(name, mode, others...)``; ``race.finish()`` waits for them all."""
    return Race(tmp_path / "race", isolated_artifacts)


class Race:
    def __init__(self, shared, artifacts_folder):
        self.shared, self.artifacts_folder, self.processes = shared, artifacts_folder, {}
        shared.mkdir()

    def start(self, name, mode, *others, **env):
        out, err = (self.shared / f"out-{name}.txt").open("w"), (self.shared / f"err-{name}.txt").open("w")
        env = {**os.environ, **env, "RACE_DIR": str(self.shared), "COURSE_ROOT": str(ROOT),
               artifacts.ARTIFACTS_VAR: str(self.artifacts_folder)}
        self.processes[name] = subprocess.Popen([sys.executable, "-u", "-c", RACER, name, mode, *others],
                                                stdout=out, stderr=err, env=env)
        out.close(), err.close()  # the racer has its own copies
        return self.processes[name]

    def wait_until_started(self, name, timeout=20):
        deadline = time.monotonic() + timeout
        while not (self.shared / f"started-{name}").exists():
            assert time.monotonic() < deadline and self.processes[name].poll() is None, self.output(name)
            time.sleep(0.02)

    def finish(self, timeout=60):
        return {name: process.wait(timeout=timeout) for name, process in self.processes.items()}

    def output(self, name):
        return (self.shared / f"out-{name}.txt").read_text()

    def errors(self, name):
        return (self.shared / f"err-{name}.txt").read_text()

    def builds(self):
        """The racers whose ``build`` started, in order."""
        path = self.shared / "builds.txt"
        return path.read_text().split() if path.exists() else []

    def folders(self):
        return {line.split(" ", 1)[1] for name in self.processes for line in self.output(name).splitlines()
                if line.startswith("FOLDER ")}


WAITS = "Waiting for another process (pid "


def test_three_processes_build_once_and_share_the_folder(race):
    """Two notebooks, or every process of ``accelerate launch``: one builds, the others wait and load."""
    names = ["a", "b", "c"]
    for name in names:
        race.start(name, "build", *(other for other in names if other != name))
    assert race.finish() == {"a": 0, "b": 0, "c": 0}, {n: race.errors(n) for n in names}
    assert len(race.builds()) == 1  # the build ran exactly once
    [builder] = race.builds()
    folder = artifacts.path_for("toy", {"width": 4})
    assert race.folders() == {str(folder)}  # each racer verified every file of that folder itself
    for name in names:
        out, err = race.output(name), race.errors(name)
        if name == builder:
            assert "No 'toy' artifact" in out and WAITS not in out
            assert "building toy" in err  # the progress bar: on the builder only
        else:
            assert out.count(WAITS) == 1 and "'toy'" in out and "No 'toy' artifact" not in out
            assert "building toy" not in err
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary left


def test_without_the_lock_every_process_builds(race):
    """The control: with the lock switched off the same race builds three times, so the test above
    shows the lock at work. (A reader still never sees a half-written folder without it: the
    rename that publishes a build is atomic; what the lock saves is the repeated work, and the
    builds deleting each other's temporary folders as stale.)"""
    names = ["a", "b", "c"]
    for name in names:
        race.start(name, "no-lock", *(other for other in names if other != name))
    race.finish()
    assert sorted(race.builds()) == names


def test_a_crashed_builder_hands_over_to_a_waiting_process(race):
    """The builder dies with no cleanup (``os._exit``): the system drops its lock, and the process
    that waited builds the artifact itself instead of waiting forever."""
    race.start("crasher", "crash", "waiter")
    race.wait_until_started("crasher")
    race.start("waiter", "build")
    assert race.finish() == {"crasher": 9, "waiter": 0}, race.errors("waiter")
    assert race.builds() == ["crasher", "waiter"]
    out = race.output("waiter")
    assert WAITS in out and "stopped before finishing it: building it here" in out
    folder = artifacts.path_for("toy", {"width": 4})
    assert race.folders() == {str(folder)}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the crasher's half build removed


def test_the_lock_of_a_killed_process_is_not_stale(race, capsys):
    """``kill -9`` while building: its lock file stays on disk, naming it, yet locks nothing."""
    killed = race.start("killed", "hang")
    race.wait_until_started("killed")
    killed.kill()
    killed.wait(timeout=20)
    lock_file = artifacts._lock_path("toy", artifacts.path_for("toy", {"width": 4}).name)
    assert lock_file.read_text().startswith(f"pid {killed.pid} ")
    start = time.monotonic()
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    assert time.monotonic() - start < 5 and artifacts.verify(path, full=True)
    out = capsys.readouterr().out
    assert "No 'toy' artifact" in out and WAITS not in out


def test_a_launch_builds_a_trainer_stage_in_every_process_together(race):
    """``together=True`` under a launch: each process runs ``build`` (a Trainer's collectives need
    them all; the racers' build waits for the other, as a collective would), one copy is kept."""
    race.start("rank0", "together", "rank1", RANK="0", WORLD_SIZE="2")
    race.start("rank1", "together", "rank0", RANK="1", WORLD_SIZE="2")
    assert race.finish() == {"rank0": 0, "rank1": 0}, race.errors("rank1")
    assert sorted(race.builds()) == ["rank0", "rank1"]
    folder = artifacts.path_for("toy", {"width": 4})
    assert race.folders() == {str(folder)}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the second copy removed
    assert "No 'toy' artifact" in race.output("rank0") and "building toy" in race.errors("rank0")
    assert race.output("rank1") == f"FOLDER {folder}\n" and "building toy" not in race.errors("rank1")


def test_together_alone_builds_like_any_stage(capsys):
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t", together=True)
    assert artifacts.verify(path, full=True) and "every process" not in capsys.readouterr().out


def test_a_trainer_stage_needed_inside_a_lone_build_is_refused_not_hung(monkeypatch):
    """Under a launch, a stage built by one process (the others wait at its lock) cannot need a
    stage that trains in every process: the others would never join. A clear error, not a hang."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")

    def comparisons(folder, progress):
        artifacts.fetch("sft", {"width": 4}, write_weights, made_by="t", together=True)

    with pytest.raises(artifacts.ArtifactError, match="'sft' trains across every process.*'comparisons' alone"):
        artifacts.fetch("comparisons", {"width": 4}, comparisons, made_by="t")
    assert not artifacts.exists("comparisons", {"width": 4})
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert artifacts.fetch("comparisons", {"width": 4}, write_weights, made_by="t")  # the lock was released


def test_a_file_system_without_locks_still_builds(monkeypatch, capsys):
    def no_locks(file):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(artifacts, "_try_lock", no_locks)
    path = artifacts.fetch("toy", {"width": 4}, write_weights, made_by="t")
    assert artifacts.verify(path, full=True) and "Cannot lock" in capsys.readouterr().out
