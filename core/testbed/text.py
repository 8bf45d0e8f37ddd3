"""Word-level tokenizer for the testbed's captions (the vocabulary is stored with the weights)."""

from __future__ import annotations

import re

import torch

PAD, UNK = 0, 1


def tokenize(captions: list[str], vocab: list[str], max_tokens: int) -> torch.Tensor:
    """Captions -> token ids [B, max_tokens]; unknown words map to <unk>, long captions are cut."""
    index = {w: i for i, w in enumerate(vocab)}
    rows = []
    for caption in captions:
        words = re.findall(r"[a-z0-9]+", caption.lower())[:max_tokens]
        ids = [index.get(w, UNK) for w in words]
        rows.append(ids + [PAD] * (max_tokens - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(captions), max_tokens)


def unknown_words(caption: str, vocab: list[str]) -> list[str]:
    known = set(vocab)
    return [w for w in re.findall(r"[a-z0-9]+", caption.lower()) if w not in known]
