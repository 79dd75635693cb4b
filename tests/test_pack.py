import io
import os
import json
import tarfile

import pytest

from course import pack as P
from course.lock import read_lock
from rlhf_helpers import artifacts
from rlhf_helpers.env import CourseConfigError


def write_weights(folder, progress):
    (folder / "weights.bin").write_bytes(b"\x01" * 1000)
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text(json.dumps({"width": 4}))


def make(stage, width):
    return artifacts.fetch(stage, {"width": width}, write_weights, made_by="a test")


def snapshot(folder):
    """Every file and folder under ``folder`` with its bytes (None for a folder): what a learner has."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def members(archive):
    with tarfile.open(archive) as tar:
        return tar.getnames()


def read_pack_json(archive):
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile("pack.json").read())


def rewrite(src, dst, *, edit_pack=None, files=None, extra=()):
    """Copy an archive member by member, changing pack.json, some files' bytes, or adding members."""
    with tarfile.open(src) as old, tarfile.open(dst, "w:gz") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()
            if member.name == "pack.json" and edit_pack:
                data = json.dumps(edit_pack(json.loads(data))).encode()
            data = (files or {}).get(member.name, data)
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
        for info, data in extra:
            new.addfile(info, io.BytesIO(data) if data is not None else None)
    return dst


def file_member(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.fixture
def archive(isolated_artifacts, tmp_path):
    """A cpu-profile pack of two artifacts, made in the test's own cache (with a labels file)."""
    make("base", 4)
    make("sft", 8)
    (isolated_artifacts / "my_labels.jsonl").write_text('{"prompt": "private"}\n')
    return P.pack(tmp_path / "shared" / "workshop.tar.gz", profile="cpu")


@pytest.fixture
def laptop(tmp_path, monkeypatch):
    """A second machine's cache, which already holds the learner's own work."""
    folder = tmp_path / "laptop"
    monkeypatch.setenv(artifacts.ARTIFACTS_VAR, str(folder))
    make("reward_model", 16)
    (folder / "my_labels.jsonl").write_text('{"prompt": "mine"}\n')
    return folder


# ------------------------------------------------------------------------------------------- pack


def test_pack_writes_one_archive_with_a_manifest(archive, isolated_artifacts):
    assert sorted(p.name for p in archive.parent.iterdir()) == ["workshop.tar.gz"]  # no temporary left
    manifest = read_pack_json(archive)
    assert manifest["format"] == 1 and manifest["profile"] == "cpu"
    assert manifest["versions"] == read_lock() and "transformers" in manifest["versions"]
    rows = {(row.stage, row.key): row.path for row in artifacts.list_artifacts()}
    assert {(e["stage"], e["key"]) for e in manifest["artifacts"]} == set(rows)
    for entry in manifest["artifacts"]:
        own = (rows[entry["stage"], entry["key"]] / artifacts.MANIFEST).read_bytes()
        assert entry["sha256_of_manifest"] == P._sha256_bytes(own)
    names = members(archive)
    for stage, key in rows:
        assert {f"{stage}/{key}/{f}" for f in ("artifact.json", "weights.bin", "sub/config.json")} <= set(names)


def test_pack_leaves_out_labels_temporaries_damaged_and_corrupt_artifacts(isolated_artifacts, tmp_path, capsys):
    good = make("base", 4)
    corrupt = make("sft", 8)
    (corrupt / "weights.bin").write_bytes(b"\x02" * 1000)  # same size, other bytes: only a full check sees it
    (isolated_artifacts / "my_labels.jsonl").write_text('{"prompt": "private"}\n')
    (isolated_artifacts / "notes.txt").write_text("not an artifact")
    for name in (f".tmp-{good.name}-0000", f"{good.name}.damaged-20250101-000000"):
        (good.parent / name).mkdir()
        for f in good.rglob("*"):  # complete copies: only their names say to skip them
            target = good.parent / name / f.relative_to(good)
            target.mkdir() if f.is_dir() else target.write_bytes(f.read_bytes())
    capsys.readouterr()
    archive = P.pack(tmp_path / "workshop.tar.gz", profile="cpu")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"sft/{corrupt.name}" in out  # one line for the skipped artifact
    assert [(e["stage"], e["key"]) for e in read_pack_json(archive)["artifacts"]] == [("base", good.name)]
    assert all(n == "pack.json" or n.startswith(f"base/{good.name}/") for n in members(archive))


def test_pack_into_a_folder_names_the_archive_after_the_profile(archive, tmp_path):
    assert P.pack(tmp_path, profile="gpu") == tmp_path / "rlhf-artifacts-gpu.tar.gz"
    assert read_pack_json(tmp_path / "rlhf-artifacts-gpu.tar.gz")["profile"] == "gpu"


# ----------------------------------------------------------------------------------------- unpack


def test_pack_then_unpack_into_an_empty_cache_gives_identical_files(archive, isolated_artifacts, tmp_path,
                                                                     monkeypatch):
    from rlhf_helpers.env import network_blocked

    fresh = tmp_path / "fresh"
    monkeypatch.setenv(artifacts.ARTIFACTS_VAR, str(fresh))
    with network_blocked():  # a workshop laptop needs no network to install the shared stages
        installed = P.unpack(archive, profile="cpu")
    monkeypatch.setenv(artifacts.ARTIFACTS_VAR, str(isolated_artifacts))
    originals = {f"{row.stage}/{row.key}": row.path for row in artifacts.list_artifacts()}
    assert sorted(installed) == sorted(originals)
    for name, path in originals.items():
        assert snapshot(fresh / name) == snapshot(path)
    assert not (fresh / "my_labels.jsonl").exists()  # the learner's labels stay on their machine
    assert sorted(p.name for p in fresh.iterdir()) == ["base", "sft"]  # no temporary folder left
    monkeypatch.setenv(artifacts.ARTIFACTS_VAR, str(fresh))
    assert sorted(f"{row.stage}/{row.key}" for row in artifacts.list_artifacts()) == sorted(originals)


def test_unpack_leaves_an_existing_artifact_alone_and_reports_only_new_ones(archive, laptop):
    existing = make("base", 4)  # this laptop already built the same artifact
    before = (existing / "weights.bin").stat()
    installed = P.unpack(archive, profile="cpu")
    assert installed == [f"sft/{artifacts.path_for('sft', {'width': 8}).name}"]
    after = (existing / "weights.bin").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert P.unpack(archive, profile="cpu") == []  # a second time: nothing new
    assert (laptop / "my_labels.jsonl").read_text() == '{"prompt": "mine"}\n'


def refused(archive, laptop, match, **kwargs):
    """Unpacking must raise one CourseConfigError and leave the laptop's cache exactly as it was."""
    before = snapshot(laptop)
    with pytest.raises(CourseConfigError, match=match) as caught:
        P.unpack(archive, **kwargs)
    assert snapshot(laptop) == before
    return str(caught.value)


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_archive_is_refused(archive, laptop, tmp_path, cut):
    data = archive.read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(data[: int(len(data) * cut)])
    refused(broken, laptop, "not a readable .tar.gz", profile="cpu")


def test_not_an_archive_and_missing_file_are_refused(laptop, tmp_path):
    (tmp_path / "notes.tar.gz").write_text("just text")
    refused(tmp_path / "notes.tar.gz", laptop, "not a readable .tar.gz", profile="cpu")
    refused(tmp_path / "absent.tar.gz", laptop, "not a readable .tar.gz", profile="cpu")


def test_archive_without_or_with_an_invalid_pack_json_is_refused(archive, laptop, tmp_path):
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as tar:
        info, data = file_member("base/abc/weights.bin", b"\x01")
        tar.addfile(info, io.BytesIO(data))
    refused(bare, laptop, "no readable pack.json", profile="cpu")
    future = rewrite(archive, tmp_path / "future.tar.gz", edit_pack=lambda m: {**m, "format": 2})
    refused(future, laptop, "invalid pack.json", profile="cpu")
    sneaky = rewrite(archive, tmp_path / "sneaky.tar.gz",
                     edit_pack=lambda m: {**m, "artifacts": [{**m["artifacts"][0], "stage": ".."}]})
    refused(sneaky, laptop, "invalid pack.json", profile="cpu")


def test_member_escaping_the_cache_is_refused_before_anything_is_extracted(archive, laptop, tmp_path):
    evil = rewrite(archive, tmp_path / "evil.tar.gz", extra=[file_member("../evil", b"gotcha")])
    message = refused(evil, laptop, "unsafe path '../evil'", profile="cpu")
    assert "nothing was installed" in message
    assert not (tmp_path / "evil").exists() and not (laptop.parent / "evil").exists()


def test_absolute_member_is_refused(archive, laptop, tmp_path):
    target = tmp_path / "absolute-evil"
    evil = rewrite(archive, tmp_path / "evil.tar.gz", extra=[file_member(str(target), b"gotcha")])
    refused(evil, laptop, "unsafe path", profile="cpu")
    assert not target.exists()


def test_link_member_is_refused(archive, laptop, tmp_path):
    key = read_pack_json(archive)["artifacts"][0]
    link = tarfile.TarInfo(f"{key['stage']}/{key['key']}/weights2.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    evil = rewrite(archive, tmp_path / "evil.tar.gz", extra=[(link, None)])
    refused(evil, laptop, "link or a device", profile="cpu")


def test_member_outside_the_listed_artifacts_is_refused(archive, laptop, tmp_path):
    stray = rewrite(archive, tmp_path / "stray.tar.gz", extra=[file_member("my_labels.jsonl", b"{}\n")])
    refused(stray, laptop, "not inside an artifact listed", profile="cpu")


def test_archive_from_another_profile_is_refused_unless_forced(archive, laptop, tmp_path):
    gpu = rewrite(archive, tmp_path / "gpu.tar.gz", edit_pack=lambda m: {**m, "profile": "gpu"})
    message = refused(gpu, laptop, "'gpu' profile", profile="cpu")
    assert "force=True" in message
    assert len(P.unpack(gpu, profile="cpu", force=True)) == 2
    assert P.unpack(gpu, profile="gpu") == []  # a gpu machine takes it as it is (all installed already)


def test_archive_from_other_library_versions_is_refused_unless_forced(archive, laptop, tmp_path):
    ours = read_lock()["transformers"]
    old = rewrite(archive, tmp_path / "old.tar.gz",
                  edit_pack=lambda m: {**m, "versions": {**m["versions"], "transformers": "0.0.1"}})
    message = refused(old, laptop, f"transformers 0.0.1 .*transformers {ours}", profile="cpu")
    assert "force=True" in message
    assert len(P.unpack(old, profile="cpu", force=True)) == 2


def test_other_versions_of_unchecked_packages_are_accepted(archive, laptop, tmp_path):
    other = rewrite(archive, tmp_path / "other.tar.gz",
                    edit_pack=lambda m: {**m, "versions": {**m["versions"], "tqdm": "0.0.1"}})
    assert len(P.unpack(other, profile="cpu")) == 2


def test_altered_artifact_bytes_are_refused_and_nothing_is_installed(archive, laptop, tmp_path):
    entries = read_pack_json(archive)["artifacts"]
    last = entries[-1]
    weights = f"{last['stage']}/{last['key']}/weights.bin"
    altered = rewrite(archive, tmp_path / "altered.tar.gz", files={weights: b"\x02" * 1000})
    message = refused(altered, laptop, f"damaged artifact {last['stage']}/{last['key']}", profile="cpu")
    assert "SHA-256" in message
    assert not (laptop / entries[0]["stage"]).exists()  # the intact artifact was not installed either


def test_altered_artifact_with_a_matching_manifest_is_refused(archive, laptop, tmp_path):
    last = read_pack_json(archive)["artifacts"][-1]
    prefix = f"{last['stage']}/{last['key']}"
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile(f"{prefix}/artifact.json").read())
    bad = b"\x02" * 1000
    manifest["files"]["weights.bin"]["sha256"] = P._sha256_bytes(bad)  # consistent, but not what was packed
    altered = rewrite(archive, tmp_path / "altered.tar.gz",
                      files={f"{prefix}/weights.bin": bad, f"{prefix}/artifact.json": json.dumps(manifest).encode()})
    refused(altered, laptop, "does not match the hash in pack.json", profile="cpu")


def test_unlisted_file_inside_an_artifact_is_refused(archive, laptop, tmp_path):
    last = read_pack_json(archive)["artifacts"][-1]
    extra = rewrite(archive, tmp_path / "extra.tar.gz",
                    extra=[file_member(f"{last['stage']}/{last['key']}/payload.py", b"print('hi')")])
    refused(extra, laptop, "does not list: payload.py", profile="cpu")


def test_the_course_commands_pack_and_unpack(archive, tmp_path, monkeypatch):
    """`python -m course pack` / `unpack`: the same, from a terminal; a refusal is one line, exit 2."""
    import subprocess
    import sys

    from course.manifest import ROOT

    laptop = tmp_path / "cli-laptop"
    env = {**os.environ, "RLHF_ARTIFACTS": str(laptop), "RLHF_PROFILE": "cpu"}
    run = subprocess.run([sys.executable, "-m", "course", "unpack", str(archive)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Installed 2 artifacts" in run.stdout, run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-m", "course", "unpack", str(tmp_path / "missing.tar.gz")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "nothing was installed" in run.stderr
