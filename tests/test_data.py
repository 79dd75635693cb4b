import re
from collections import Counter

import pytest

from rlhf_helpers import data

SAMPLE = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and HORATIO_

**HAMLET**  
Who's there? _\\[Aside]_ speak,  
And unfold yourself.

**HORATIO**  
*Exit Ghost, and
returns.*

**HORATIO**  
Friends to this ground.  
*[He draws his sword.]*

**BERNARDO**  
__\\[Awaking]_  
Long live the king! &amp; c.

_Burthen _\\[dispersedly, within_

### SCENE II. Another room.

Orphan text with no speaker is dropped.
"""


def test_conversion_of_every_markup():
    speeches = data.markdown_to_speeches(SAMPLE)
    assert speeches == [
        ("HAMLET", "Who's there? speak,\nAnd unfold yourself."),
        # the second HORATIO speech only: the first was a stage direction, wrapped over two lines
        ("HORATIO", "Friends to this ground."),
        ("BERNARDO", "Long live the king! & c."),
    ]
    text = data.format_speeches(speeches)
    assert text.startswith("HAMLET:\nWho's there? speak,\n")
    assert text.endswith("& c.\n\n")


def test_train_val_split_is_deterministic_and_cut_between_speeches():
    text = data.format_speeches([(f"S{i}", f"line {i}") for i in range(100)])
    train, val = data.train_val_split(text, 0.1)
    assert train + val == text
    assert val.startswith("S") and train.endswith("\n\n")
    assert 0.05 < len(val) / len(text) < 0.15
    assert data.train_val_split(text, 0.1) == (train, val)
    with pytest.raises(ValueError):
        data.train_val_split(text, 1.5)


@pytest.fixture(scope="module")
def corpus():
    speeches = data.load_speeches()
    return speeches, data.format_speeches([(s, t) for _, s, t in speeches])


def test_real_corpus_has_no_markup_left(corpus):
    _, text = corpus
    for mark in ("_", "*", "#", "[", "]", "\\", "<", ">", "&amp;"):
        assert mark not in text, f"{mark!r} survived the conversion"
    # the commonest stage directions, had they survived, would stand alone on a line
    for direction in (r"Exeunt\.?", r"Exit\.?", r"Exit \w+\.?", r"Aside\.?"):
        assert not re.search(rf"^{direction}$", text, re.MULTILINE), direction


def test_real_corpus_counts(corpus):
    speeches, text = corpus
    summary = data.summarize(speeches)
    assert summary.plays == 38
    assert 30_000 < summary.speeches < 33_000  # design: ~31 k speeches
    assert 1_200 < summary.speakers < 1_700
    assert 4_300_000 < summary.characters < 5_000_000  # design: ~4.5 M characters
    assert summary.characters == len(text)
    # every speech is a NAME: line and at least one line of text
    blocks = text.strip("\n").split("\n\n")
    assert len(blocks) == summary.speeches
    assert all(re.match(r"^[A-Za-z][^\n:]*:\n\S", b) for b in blocks), "a speech without a NAME: line"
    assert "ROSENCRANTZ & GUILDENSTERN" in {s for _, s, _ in speeches}  # a colon removed from a name
    assert Counter(s for _, s, _ in speeches)["HAMLET"] > 300


def test_corpus_artifact_matches_direct_conversion(corpus, isolated_artifacts):
    _, text = corpus
    assert data.load_corpus() == text
    assert data.corpus_summary() == data.summarize(corpus[0])
    assert (isolated_artifacts / "corpus").is_dir()
