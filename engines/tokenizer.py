"""The CLIP tokenizer of SD1.5: built offline from the BPE table inside `open_clip_torch`, or a model folder's own.

SD1.5 uses OpenAI CLIP's byte-level BPE (49408 tokens: 256 byte symbols, the same with an end-of-word mark,
48894 merges, <|startoftext|> = 49406, <|endoftext|> = 49407, also used as padding). The merge table is the
`bpe_simple_vocab_16e6.txt.gz` file of the `open_clip` package; we read it as data, without importing
`open_clip` (its import needs torchvision), write it as the `vocab.json` + `merges.txt` pair that every
transformers version reads, and load a fast CLIP tokenizer from those files, so no hub download is needed.
A diffusers folder's own `tokenizer/` is read in either standard form: `tokenizer.json` (what current
transformers writes) or `vocab.json` + `merges.txt`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from .errors import ModelFileError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77
_MERGES = 49152 - 256 - 2  # the table's first line is a version header; CLIP keeps this many merges


def bpe_table_path() -> Path:
    """Where the BPE table is; an ModelFileError sentence when `open_clip_torch` is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / BPE_FILE
            if path.is_file():
                return path
    raise ModelFileError(
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


def _load_fast(folder: Path):
    # `CLIPTokenizerFast` reads tokenizer.json, or converts vocab.json + merges.txt, on transformers 4.x
    # (where the plain `CLIPTokenizer` is the slow, file-only class) and 5.x (where both names are one class).
    from transformers import CLIPTokenizerFast

    return CLIPTokenizerFast.from_pretrained(
        str(folder), local_files_only=True, model_max_length=MAX_LENGTH, clean_up_tokenization_spaces=False
    )


def clip_tokenizer():
    """A transformers CLIP tokenizer equal to openai/clip-vit-large-patch14's, built without a download."""
    vocab, merges = _vocab_and_merges(str(bpe_table_path()))
    with tempfile.TemporaryDirectory(prefix="rerender-clip-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
        (Path(folder) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return _load_fast(Path(folder))


def has_tokenizer_files(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer in a standard form: tokenizer.json, or vocab.json + merges.txt."""
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def folder_tokenizer(folder: Path, flag: str = "--model"):
    """The tokenizer saved in `folder` (a model's `tokenizer/`), in either standard form."""
    if not has_tokenizer_files(folder):
        raise ModelFileError(
            f"{flag} {folder} holds no tokenizer (tokenizer.json, or vocab.json and merges.txt); "
            "remove the empty folder to use the built-in SD1.5 CLIP tokenizer"
        )
    try:
        tokenizer = _load_fast(folder)
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{flag} {folder} could not be read as a tokenizer ({error})") from None
    if tokenizer.pad_token_id is None or tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ModelFileError(
            f"{flag} {folder} is a tokenizer without start, end and padding tokens; SD1.5 needs CLIP's "
            "<|startoftext|> and <|endoftext|>"
        )
    return tokenizer


def make_tokenize(tokenizer):
    """texts -> int64 token ids (B, 77), padded with <|endoftext|> and truncated as SD pipelines do."""

    def tokenize(texts):
        return tokenizer(
            list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids

    return tokenize
