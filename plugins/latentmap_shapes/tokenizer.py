"""A word-level tokenizer for the tiny shapes CLIP.

open_clip's BPE tokenizer needs a 49,408-row token embedding (megabytes by itself); the shapes world
has a few dozen words, so a closed word list keeps the shipped weights small. Lower-cased words
outside the list become ``<unk>``. The end-of-text token has the largest id, because open_clip's
text tower pools the output at the position of the largest id (``pool_type="argmax"``), as CLIP does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

PAD, START, UNKNOWN = "<pad>", "<start>", "<unk>"
END = "<end>"
_WORD = re.compile(r"[a-z]+")


class WordTokenizer:
    """Maps prompts to (B, context_length) token ids: ``<start> words... <end> <pad>...``."""

    def __init__(self, words: Sequence[str], context_length: int) -> None:
        self.words = list(words)
        self.context_length = int(context_length)
        self.itos = [PAD, START, UNKNOWN, *self.words, END]
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def split(self, prompt: str) -> list[str]:
        """Lower-cased alphabetic words of ``prompt``."""
        return _WORD.findall(prompt.lower())

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """Token ids (B, context_length); words beyond the context are dropped, ``<end>`` always kept."""
        ids = torch.full((len(prompts), self.context_length), self.stoi[PAD], dtype=torch.long)
        unknown = self.stoi[UNKNOWN]
        for row, prompt in enumerate(prompts):
            tokens = [self.stoi.get(word, unknown) for word in self.split(prompt)][: self.context_length - 2]
            sequence = [self.stoi[START], *tokens, self.stoi[END]]
            ids[row, : len(sequence)] = torch.tensor(sequence)
        return ids

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` the tokenizer does not know (they all read as ``<unk>``)."""
        return [word for word in self.split(prompt) if word not in self.stoi]
