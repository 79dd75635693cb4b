"""The room's labels: export, merge (bad rows by file and line, duplicates once), agreement."""

import json

import pytest

from rlhf_helpers import labeler, preferences, room

PROMPT = "Continue this line about night: I will watch"
# Gold utilities by hand; the length term is -(40 - characters) / 40 * 0.5 below a full line of 40.
KIND = "the night is gentle and fair tonight."     # gold 1.4625: follows (1), cheerful: gentle, fair (+0.5), 37 chars: -(40-37)/40 * 0.5 = -0.0375
GRIM = "Death and blood upon the night."           # gold 0.3875: follows (1), gloomy: death, blood (-0.5), 31 chars: -(40-31)/40 * 0.5 = -0.1125
OFF = "My lord, I come."                           # gold -0.3: no "night", so it does not follow; no tone; 16 chars: -(40-16)/40 * 0.5 = -0.3


def label(path, a, b, choice, **extra):
    preferences.append_label(path, {"prompt": PROMPT, "a": a, "b": b, "choice": choice, **extra})


@pytest.fixture
def three_attendees(tmp_path):
    """Alice and Bob agree with gold; Carol prefers the grim line; Bob's file has two bad rows."""
    files = []
    for name, grim_choice in [("alice", "b"), ("bob", "b"), ("carol", "a")]:
        own = tmp_path / f"{name}-own.jsonl"
        label(own, GRIM, KIND, grim_choice)        # alice, bob: the kind line; carol: the grim one
        label(own, OFF, KIND, "b")                 # everyone: the line that follows
        label(own, KIND, OFF, "skip")
        exported = tmp_path / f"{name}.jsonl"
        room.export_labels(own, exported, annotator=name)
        files.append(exported)
    with files[1].open("a") as f:
        f.write('{"prompt": "x", "a": "y", "b": "z", "choice": "A"}\n')   # bad choice
        f.write('{"prompt": "half a line\n')                                 # crash mid-write
        f.write(files[1].read_text().splitlines()[0] + "\n")                # a duplicate row
    return files


def test_export_adds_an_anonymous_annotator_and_leaves_the_source_alone(tmp_path):
    own = tmp_path / "my_labels.jsonl"
    label(own, KIND, GRIM, "a")
    before = own.read_bytes()
    written, problems = room.export_labels(own, tmp_path / "out.jsonl")
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert written == 1 and not problems and row["annotator"].startswith("anon-") and own.read_bytes() == before


def test_merge_reports_bad_rows_by_file_and_line_and_loses_nothing(three_attendees, tmp_path):
    before = [f.read_bytes() for f in three_attendees]
    from rlhf_helpers.env import network_blocked

    merged = tmp_path / "room.jsonl"
    with network_blocked():  # the room's Wi-Fi may be down
        report = room.merge(three_attendees, merged)
    assert report.kept == 9 and report.duplicates == 1 and report.annotators == {"alice", "bob", "carol"}
    assert [p.split(":")[0] for p in report.problems] == ["bob.jsonl, line 4", "bob.jsonl, line 5"]
    assert "choice 'A'" in report.problems[0]
    rejected = [json.loads(line) for line in merged.with_name("room.jsonl.rejected").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [4, 5] and rejected[1]["text"].startswith('{"prompt": "half')
    assert [f.read_bytes() for f in three_attendees] == before, "inputs are never changed"
    assert len(preferences.load_labels(merged).comparisons) == 6, "the merged file is a labels file"


def test_report_measures_agreement_with_each_other_gold_and_the_simulated_labeler(three_attendees, tmp_path):
    merged = tmp_path / "room.jsonl"
    room.merge(three_attendees, merged)
    report = room.room_report(merged, tau=0.5)
    assert report.pairs == 2 and report.shared_pairs == 2 and report.labels == 9  # a skip answers nothing
    rows = {r.annotator: r for r in report.annotators}
    assert rows["alice"].with_gold == 1.0 and rows["carol"].with_gold == 0.5
    # carol's two pairs: GRIM over KIND, against a gold gap of 1.4625 - 0.3875 = 1.075, and KIND over
    # OFF, with it, by 1.4625 - (-0.3) = 1.7625 (the gold utilities are worked out beside KIND, GRIM and OFF)
    assert rows["carol"].with_simulated == pytest.approx((labeler.sigmoid(-1.075 / 0.5) + labeler.sigmoid(1.7625 / 0.5)) / 2)
    assert report.cohen["alice", "bob"] == (1.0, 2)
    assert report.cohen["alice", "carol"][0] < 1.0
    assert "Fleiss' kappa" in report.text() and "carol" in report.text()


def test_kappas_match_hand_computed_values():
    # two annotators, 4 items: observed 2/4; expected from margins (first: 3/4 & 1/4, second: 1/4 & 3/4)
    kappa = room.cohen_kappa(["first", "first", "first", "second"], ["first", "second", "second", "second"])
    assert kappa == pytest.approx((0.5 - (3 * 1 + 1 * 3) / 16) / (1 - (3 * 1 + 1 * 3) / 16))
    assert room.cohen_kappa(["first", "second"], ["first", "second"]) == 1.0
    # Fleiss: item 1 all agree (P=1), item 2 split 2/1 (P=1/3); pooled first 4/6, second 2/6
    expected = (4 / 6) ** 2 + (2 / 6) ** 2
    assert room.fleiss_kappa([["first"] * 3, ["first", "second", "second"]]) == pytest.approx(
        ((1 + 1 / 3) / 2 - expected) / (1 - expected))


def test_a_b_swap_is_the_same_pair():
    rows = [{"prompt": PROMPT, "a": KIND, "b": GRIM, "choice": "a", "annotator": "x"},
            {"prompt": PROMPT, "a": GRIM, "b": KIND, "choice": "b", "annotator": "y"}]
    table = room.answers_by_pair(rows)
    assert len(table) == 1 and len(set(next(iter(table.values())).values())) == 1


def test_the_course_command_merges_and_reports(three_attendees, tmp_path):
    import subprocess
    import sys

    from course.manifest import ROOT

    merged = tmp_path / "room.jsonl"
    run = subprocess.run([sys.executable, "-m", "course", "labels", "merge", *map(str, three_attendees), "-o", str(merged)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "9 labels from 3 annotators; 1 duplicates counted once; 2 bad rows" in run.stdout
    assert "bob.jsonl, line 5: not valid JSON" in run.stdout and f"RLHF_LABELS={merged}" in run.stdout
    run = subprocess.run([sys.executable, "-m", "course", "labels", "report", str(merged)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Cohen's kappa alice / bob: 1.00 on 2 shared pairs" in run.stdout, run.stdout
    run = subprocess.run([sys.executable, "-m", "course", "labels", "merge"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "usage: python -m course labels merge" in run.stderr


# ---- arena votes (lesson 07) ------------------------------------------------------------------

def test_votes_merge_like_labels_and_give_a_human_elo_beside_the_simulated_one(tmp_path):
    from rlhf_helpers import arena

    files = []
    for name in ("dana", "eli"):
        own = tmp_path / f"{name}-votes.jsonl"
        love = "Continue this line about love: Tell me in sadness,"
        room.append_vote(own, arena.Battle("ppo", "sft", "a", love))  # PPO over SFT
        room.append_vote(own, arena.Battle("base", "sft", "b", "Continue this line: O Romeo"))  # SFT over base
        exported = tmp_path / f"{name}.jsonl"
        room.export_labels(own, exported, name, room.vote_problem)
        files.append(exported)
    files.append(files[0])  # one attendee's file handed in twice
    with files[0].open("a") as f:
        f.write('{"model_a": "ppo", "model_b": "ppo", "winner": "a", "prompt": "p"}\n')
    merged = tmp_path / "votes.jsonl"
    report = room.merge(files, merged, room.vote_problem)
    assert report.kept == 4 and report.duplicates == 2, "a file handed in twice counts once"
    assert report.problems == ["dana.jsonl, line 3: a model cannot battle itself"] * 2
    simulated = [arena.Battle("sft", "ppo", "a", "p"), arena.Battle("sft", "base", "a", "p"),
                 arena.Battle("ppo", "base", "a", "p")] * 5  # the simulated judge likes SFT best
    rows = room.human_and_simulated_elo(merged, simulated)
    assert [r[0] for r in rows] == ["sft", "ppo", "base"], "ordered by the simulated rating"
    human = {name: h for name, h, _, _ in rows}
    assert human["ppo"] > human["sft"] > human["base"] and rows[0][3] == 4


def test_a_vote_with_a_bad_winner_is_named():
    assert "winner 'A'" in room.vote_problem({"model_a": "x", "model_b": "y", "winner": "A", "prompt": "p"})
    assert "'prompt'" in room.vote_problem({"model_a": "x", "model_b": "y", "winner": "a"})
    assert room.vote_problem({"model_a": "x", "model_b": "y", "winner": "tie", "prompt": "p"}) is None
