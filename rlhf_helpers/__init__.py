"""Helpers for the *RLHF from scratch* course.

Each module holds one concept, and a lesson imports only what earlier lessons taught:

- ``env``        device, seed, profiles, the offline guard
- ``data``       the Shakespeare corpus and its split
- ``tokenizers`` real tiktoken encodings with no network, and the course tokenizer
- ``bpe``        byte-pair encoding from scratch (lesson 01's reference code)
- ``gpt``        the lesson-02 GPT, its training loop, its GPT-2 export, the ``base`` artifact
- ``instructions`` the demonstration tasks and the check of whether a response follows one
- ``sft``        supervised fine-tuning with trl and the ``sft`` artifact (lesson 03)
- ``artifacts``  the cache of trained stages (get it, or build it with the reference code)
- ``exercises``  the check behind every exercise; ``checks`` holds each lesson's checks
- ``figures``    the key figures a lesson reports to ``python -m course bench``
- ``widgets``    notebook widgets (the token visualiser)

Importing the package switches the Hugging Face libraries offline (see ``env.go_offline``).
"""

from rlhf_helpers.env import go_offline

go_offline()

__version__ = "0.1.0"
