"""Which tokenizer a model gets (its own, the built-in CLIP one, or the hub's), checked against its text encoder."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import _first_line
from .errors import ModelFileError
from .tokenizer import MAX_LENGTH, clip_tokenizer, folder_tokenizer, has_tokenizer_files


def model_tokenizer(folder: Path | None, text_encoder, flag: str = "--model"):
    """The folder's own tokenizer (tokenizer/ in either standard form), else the built-in CLIP tokenizer."""
    own = folder is not None and (folder / "tokenizer").is_dir() and has_tokenizer_files(folder / "tokenizer")
    if own:
        return check_tokenizer(
            folder_tokenizer(folder / "tokenizer", flag), text_encoder, f"{flag} {folder}: its tokenizer/"
        )
    return check_tokenizer(
        clip_tokenizer(),
        text_encoder,
        f"{flag} {folder or ''}".rstrip() + ": the built-in SD1.5 CLIP tokenizer",
    )


def hub_tokenizer(model: str, text_encoder):
    """The tokenizer of hub model `model` (needs a network)."""
    from transformers import CLIPTokenizerFast

    try:
        tokenizer = CLIPTokenizerFast.from_pretrained(
            model, subfolder="tokenizer", model_max_length=MAX_LENGTH
        )
    except (OSError, ValueError) as error:
        raise ModelFileError(
            f"--model {model}: its tokenizer could not be loaded ({_first_line(error)})"
        ) from None
    return check_tokenizer(tokenizer, text_encoder, f"--model {model}: its tokenizer")


def check_tokenizer(tokenizer, text_encoder, what: str):
    """Refuse a tokenizer whose ids could index past the text encoder's embeddings (an IndexError in the
    middle of the first keyframe otherwise), or a text encoder with fewer than 77 positions."""
    vocab = int(text_encoder.config.vocab_size)
    if len(tokenizer) > vocab:
        raise ModelFileError(
            f"{what} has {len(tokenizer)} tokens but the text encoder only {vocab} embeddings; "
            "give the model's own tokenizer (a tokenizer/ folder with tokenizer.json, or vocab.json and merges.txt)"
        )
    positions = int(getattr(text_encoder.config, "max_position_embeddings", MAX_LENGTH))
    if positions < MAX_LENGTH:
        raise ModelFileError(
            f"{what}: the text encoder has {positions} positions; SD1.5 prompts take {MAX_LENGTH}"
        )
    return tokenizer
