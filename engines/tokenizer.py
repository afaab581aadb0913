"""The CLIP tokenizer of SD1.5, built offline from the BPE table that ships inside `open_clip_torch`.

SD1.5 uses OpenAI CLIP's byte-level BPE (49408 tokens: 256 byte symbols, the same with an end-of-word mark,
48894 merges, <|startoftext|> = 49406, <|endoftext|> = 49407, also used as padding). The merge table is the
`bpe_simple_vocab_16e6.txt.gz` file of the `open_clip` package; we read it as data, without importing
`open_clip` (its import needs torchvision), and build a transformers `CLIPTokenizer` from it, so no hub
download is needed.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from ..filter.errors import InputError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77
_MERGES = 49152 - 256 - 2  # the table's first line is a version header; CLIP keeps this many merges


def bpe_table_path() -> Path:
    """Where the BPE table is; an InputError sentence when `open_clip_torch` is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / BPE_FILE
            if path.is_file():
                return path
    raise InputError(
        "the CLIP tokenizer's BPE table was not found; install it with "
        "`pip install --no-deps open-clip-torch` (or use a diffusers model folder that has a tokenizer/ folder)"
    )


def _byte_symbols() -> list[str]:
    # CLIP's byte -> printable-unicode table: printable Latin-1 bytes map to themselves, the others to 256+n.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@lru_cache(maxsize=1)
def _vocab_and_merges(path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer():
    """A transformers `CLIPTokenizer` equal to openai/clip-vit-large-patch14's, built without a download."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges(str(bpe_table_path()))
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_LENGTH)


def make_tokenize(tokenizer):
    """texts -> int64 token ids (B, 77), padded with <|endoftext|> and truncated as SD pipelines do."""

    def tokenize(texts):
        return tokenizer(
            list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids

    return tokenize
