"""Small notebook widgets. Lesson 01: a token visualiser; lesson 03: a generation playground.

Each tokenizer is given as a *segmenter*: a function from text to the list of its tokens as
display strings (partial UTF-8 characters show as '�', sentencepiece keeps its '▁'). The HTML
is plain inline-styled markup, so a saved notebook shows it without a running kernel.
"""

from __future__ import annotations

import html
from typing import Callable, Mapping

Segmenter = Callable[[str], list[str]]

# Pale, distinct backgrounds; neighbouring tokens alternate through them.
PALETTE = ("#cfe8ff", "#ffd9b3", "#d5f5d0", "#f7d0e6", "#fff2a8", "#e0d7ff", "#c9f0ee")


def _show(piece: str) -> str:
    """Escape a token for HTML and make its newlines and tabs visible."""
    return html.escape(piece).replace("\t", "→\t").replace("\n", "↵\n")


def tokens_html(pieces: list[str]) -> str:
    """One tokenization as coloured spans, one colour per token, in a wrapping <div>."""
    spans = "".join(
        f'<span style="background:{PALETTE[i % len(PALETTE)]};border-radius:3px;padding:0 1px">'
        f"{_show(piece)}</span>"
        for i, piece in enumerate(pieces)
    )
    return f'<div style="font-family:monospace;white-space:pre-wrap;line-height:1.7">{spans}</div>'


def compare_html(text: str, segmenters: Mapping[str, Segmenter]) -> str:
    """A table with one row per tokenizer: its name, its token count, its coloured tokens."""
    rows = []
    for name, segment in segmenters.items():
        pieces = segment(text)
        cell = "text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid #ddd"
        rows.append(
            f'<tr><td style="{cell};white-space:nowrap"><b>{html.escape(name)}</b><br>{len(pieces)} tokens</td>'
            f'<td style="{cell}">{tokens_html(pieces)}</td></tr>'
        )
    return f'<table style="border-collapse:collapse">{"".join(rows)}</table>'


def token_visualiser(segmenters: Mapping[str, Segmenter], text: str = "", rows: int = 4):
    """A text box and, under it, every tokenizer's tokens, updated as you type."""
    import ipywidgets as widgets

    box = widgets.Textarea(value=text, rows=rows, layout=widgets.Layout(width="100%"),
                           placeholder="Type something to tokenize")
    view = widgets.HTML(compare_html(text, segmenters))

    def update(change) -> None:
        view.value = compare_html(change["new"], segmenters)

    box.observe(update, names="value")
    return widgets.VBox([box, view])


# --------------------------------------------------------------------------------------------
# Lesson 03: a generation playground.
# --------------------------------------------------------------------------------------------

Responder = Callable[[str, float, int, int], str]  # (prompt, temperature, top_k, max_new_tokens) -> text


def generation_playground(respond: Responder, prompt: str = "Continue this line about love: Tell me in sadness,"):
    """A prompt box, sliders for temperature, top-k and length, a button, and the model's answer.

    ``respond`` does the generating, so the same playground serves any model: lesson 03 passes one
    that samples from the base or the SFT model through the chat template.
    """
    import ipywidgets as widgets

    box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="100%"))
    temperature = widgets.FloatSlider(value=0.7, min=0.0, max=2.0, step=0.05, description="temperature")
    top_k = widgets.IntSlider(value=50, min=1, max=200, description="top-k")
    max_tokens = widgets.IntSlider(value=40, min=1, max=100, description="max tokens")
    button = widgets.Button(description="Generate", button_style="primary")
    output = widgets.HTML()

    def run(_=None) -> None:
        output.value = "<i>generating…</i>"
        text = respond(box.value, temperature.value, top_k.value, max_tokens.value)
        output.value = f'<pre style="white-space:pre-wrap">{html.escape(text) or "(empty response)"}</pre>'

    button.on_click(run)
    run()
    return widgets.VBox([box, widgets.HBox([temperature, top_k, max_tokens]), button, output])


# --------------------------------------------------------------------------------------------
# Lesson 05: label comparisons yourself.
# --------------------------------------------------------------------------------------------

Pair = tuple[str, str, str]  # (prompt, response A, response B)


def _pair_key(prompt: str, a: str, b: str) -> tuple[str, frozenset]:
    """A pair is the same pair whichever response is shown as A."""
    return prompt, frozenset((a, b))


def _answered(path) -> set:
    """The pairs the labels file already has an answer for (any answer, skips included)."""
    import json
    from pathlib import Path

    path = Path(path)
    done = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            try:
                row = json.loads(line)
                done.add(_pair_key(row["prompt"], row["a"], row["b"]))
            except (ValueError, KeyError, TypeError):
                continue  # a bad row: load_labels names it; here it simply answers nothing
    return done


def progress_text(labelled: int, ties: int, skipped: int, left: int) -> str:
    """``"12 labelled, 3 ties, 1 skipped; 84 pairs left"``."""
    return f"{labelled} labelled, {ties} ties, {skipped} skipped; {left} pairs left"


def _response_box(title: str, text: str) -> str:
    return (f'<div style="flex:1;border:1px solid #ccc;border-radius:6px;padding:8px;margin:4px">'
            f'<b>{title}</b><pre style="white-space:pre-wrap;margin:4px 0 0 0">{html.escape(text) or "(empty)"}</pre></div>')


def labelling_widget(pairs: list[Pair], path):
    """Show one prompt and two responses at a time; you answer A, B, tie or skip.

    Every answer is appended to the labels file at ``path`` at once (``preferences.append_label``),
    so closing the notebook loses nothing, and the file is never rewritten. Pairs the file already
    answers are not shown again: run the cell later and you carry on where you stopped. The counts
    include the answers already in the file.
    """
    import ipywidgets as widgets

    from rlhf_helpers import preferences

    report = preferences.load_labels(path)
    counts = {"labelled": len(report.comparisons), "tie": report.ties, "skip": report.skips}
    done = _answered(path)
    todo = [pair for pair in pairs if _pair_key(*pair) not in done]
    position = {"index": 0}

    view = widgets.HTML()
    status = widgets.HTML()
    notes = widgets.HTML(
        f"<i>{len(report.problems)} bad row(s) in {html.escape(str(path))} are ignored: "
        f"{html.escape('; '.join(report.problems[:3]))}</i>" if report.problems else "")
    buttons = {choice: widgets.Button(description=label, button_style=style)
               for choice, label, style in (("a", "A is better", "success"), ("b", "B is better", "success"),
                                            ("tie", "tie", ""), ("skip", "skip", "warning"))}

    def show() -> None:
        left = len(todo) - position["index"]
        status.value = progress_text(counts["labelled"], counts["tie"], counts["skip"], left)
        if left == 0:
            view.value = "<b>No pairs left: thank you!</b>"
            for button in buttons.values():
                button.disabled = True
            return
        prompt, a, b = todo[position["index"]]
        view.value = (f'<div><b>Prompt:</b> {html.escape(prompt)}</div>'
                      f'<div style="display:flex">{_response_box("A", a)}{_response_box("B", b)}</div>')

    def answer(choice: str) -> None:
        if position["index"] >= len(todo):
            return
        prompt, a, b = todo[position["index"]]
        try:
            preferences.append_label(path, {"prompt": prompt, "a": a, "b": b, "choice": choice})
        except OSError as err:  # a full disk, a read-only folder: say so, and keep the pair on screen
            status.value = f"<b>Could not save your answer</b> ({html.escape(str(err))}); nothing was lost."
            return
        counts["labelled" if choice in ("a", "b") else choice] += 1
        position["index"] += 1
        show()

    for choice, button in buttons.items():
        button.on_click(lambda _, choice=choice: answer(choice))
    show()
    return widgets.VBox([view, widgets.HBox(list(buttons.values())), status, notes])


# --------------------------------------------------------------------------------------------
# Lesson 07: chat with a model, and vote blind in the arena.
# --------------------------------------------------------------------------------------------

def chat_reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 40, temperature: float = 0.7,
               top_k: int = 50) -> str:
    """The model's next assistant turn for a conversation (a list of ``{"role", "content"}``).

    The whole conversation goes through the chat template; the oldest turns are dropped when it
    would not fit in the model's context with room for the answer. Generation stops at the end of
    the answer (``<|im_end|>`` in the course's template).
    """
    import torch

    from rlhf_helpers.models import context_length
    from rlhf_helpers.tokenizers import end_of_answer_id

    device = next(model.parameters()).device
    stop_ids = [end_of_answer_id(tokenizer), tokenizer.eos_token_id]
    room = context_length(model) - max_new_tokens
    turns = list(messages)
    while True:
        ids = tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        if len(ids) <= room or len(turns) <= 1:
            break
        turns = turns[2:] if len(turns) > 2 else turns[1:]  # drop the oldest exchange
    ids = torch.tensor([list(ids)[-room:]], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_k=top_k if temperature > 0 else None, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True).strip()


def chat_widget(models: Mapping[str, tuple], temperature: float = 0.7):
    """Chat with any of ``models`` (``{name: (model, tokenizer)}``): several turns, through the chat
    template. Switching model keeps the conversation; *Clear* starts a new one."""
    import ipywidgets as widgets

    choose = widgets.Dropdown(options=list(models), description="model")
    box = widgets.Text(placeholder="Continue this line about love: Tell me in sadness,",
                       layout=widgets.Layout(width="70%"))
    send, clear = widgets.Button(description="Send", button_style="primary"), widgets.Button(description="Clear")
    heat = widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.05, description="temperature")
    view = widgets.HTML()
    messages: list[dict] = []
    speakers: list[str] = []

    def show() -> None:
        rows = [f'<div style="margin:2px 0"><b>{html.escape(who)}:</b> {html.escape(m["content"]) or "(empty)"}</div>'
                for who, m in zip(speakers, messages)]
        view.value = "".join(rows) or "<i>Say something to the model.</i>"

    def on_send(_=None) -> None:
        text = box.value.strip()
        if not text:
            return
        messages.append({"role": "user", "content": text})
        speakers.append("you")
        model, tokenizer = models[choose.value]
        messages.append({"role": "assistant",
                         "content": chat_reply(model, tokenizer, messages, temperature=heat.value)})
        speakers.append(choose.value)
        box.value = ""
        show()

    def on_clear(_=None) -> None:
        messages.clear()
        speakers.clear()
        show()

    send.on_click(on_send)
    clear.on_click(on_clear)
    show()
    return widgets.VBox([widgets.HBox([choose, heat]), view, widgets.HBox([box, send, clear])])


def arena_vote_widget(prompts: list[str], answers: Mapping[str, list[str]], battles: list, seed: int = 0,
                      votes_file=None):
    """Vote blind between two models' answers to a held-out prompt; the Elo ratings update as you go.

    ``answers[name][i]`` answers ``prompts[i]``; ``battles`` (``arena.Battle``) are the judged ones
    the ratings start from. Which models you see is hidden until you vote. Your votes are the
    returned widget's ``votes`` attribute, and each is also appended to ``votes_file`` (default:
    ``arena_votes.jsonl`` in the artifacts folder), so that a workshop can pool the room's votes
    (``python -m course votes merge``). The ``arena`` artifact never changes.
    """
    import random

    import ipywidgets as widgets

    from rlhf_helpers import arena, room

    votes_file = room.votes_path() if votes_file is None else votes_file

    names = list(answers)
    rng = random.Random(seed)
    votes: list = []
    current: dict = {}
    view, result, table = widgets.HTML(), widgets.HTML(), widgets.HTML()
    buttons = {choice: widgets.Button(description=label, button_style=style)
               for choice, label, style in (("a", "A is better", "success"), ("b", "B is better", "success"),
                                            ("tie", "tie", ""))}

    def ratings_html() -> str:
        ratings = arena.elo_ratings(list(battles) + votes, names, permutations=20)
        rows = "".join(f"<tr><td>{html.escape(n)}</td><td style='text-align:right'>{r:.0f}</td></tr>"
                       for n, r in sorted(ratings.items(), key=lambda item: -item[1]))
        return f"<table><tr><th>model</th><th>Elo</th></tr>{rows}</table><i>{len(votes)} vote(s) of yours</i>"

    def next_pair() -> None:
        i = rng.randrange(len(prompts))
        a, b = rng.sample(names, 2)
        current.update(index=i, a=a, b=b)
        view.value = (f'<div><b>Prompt:</b> {html.escape(prompts[i])}</div><div style="display:flex">'
                      f'{_response_box("A", answers[a][i])}{_response_box("B", answers[b][i])}</div>')

    def vote(choice: str) -> None:
        a, b, i = current["a"], current["b"], current["index"]
        votes.append(arena.Battle(a, b, choice, prompts[i]))
        room.append_vote(votes_file, votes[-1])
        result.value = f"A was <b>{html.escape(a)}</b>, B was <b>{html.escape(b)}</b>."
        table.value = ratings_html()
        next_pair()

    for choice, button in buttons.items():
        button.on_click(lambda _, choice=choice: vote(choice))
    next_pair()
    table.value = ratings_html()
    box = widgets.VBox([view, widgets.HBox(list(buttons.values())), result, table])
    box.votes = votes
    return box
