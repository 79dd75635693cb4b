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


def generation_playground(respond: Responder, prompt: str = "Write a line about the sea."):
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
