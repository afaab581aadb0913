"""Reading weights files safely: whether a file may be read is decided by its content, never by its name.

A safetensors file is recognised by its header (8-byte little-endian length, then a JSON header, validated
and bounded) and read as tensors; anything else goes through torch's restricted unpickler
(`torch.load(weights_only=True)`), which reads plain state dicts and runs no code. A file that needs
arbitrary code to load is refused unless the caller allows pickles (docs/decisions.md, decision 11).
"""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from pathlib import Path

import torch

from .errors import ModelFileError

# The safetensors format: an 8-byte little-endian header length, then a JSON header of that length (the
# safetensors library itself refuses headers above 100 MB, and so do we).
SAFETENSORS_HEADER_MAX = 100_000_000
SAFETENSORS_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "U64", "I64", "F64",
     "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}
)  # fmt: skip


class NeedsCode(Exception):
    """torch's restricted unpickler refused the file: it names something other than tensors and containers."""


def safetensors_header(path: Path) -> dict | None:
    """The parsed JSON header when `path` is a safetensors file by content, None when it is not one.

    A file whose first bytes announce a safetensors header (a plausible length followed by `{`) but whose
    header is not a valid one is an ModelFileError: it is neither safetensors nor anything else we read."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(9)
        if len(prefix) < 9:
            return None
        (length,) = struct.unpack("<Q", prefix[:8])
        if not 2 <= length <= min(SAFETENSORS_HEADER_MAX, size - 8) or prefix[8:9] != b"{":
            return None
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    data = size - 8 - length
    if not isinstance(header, dict) or not all(
        _valid_tensor_entry(value, data) for key, value in header.items() if key != "__metadata__"
    ):
        raise ModelFileError(
            f"{path} starts like a safetensors file but its header is not valid; the file is damaged or "
            "truncated: download it again"
        )
    return header


def _valid_tensor_entry(entry: object, data_bytes: int) -> bool:
    if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return False
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets):
        return False
    return 0 <= offsets[0] <= offsets[1] <= data_bytes


def _torch_load(path: Path, allow_pickle: bool) -> object:
    """torch's restricted loader first; the unrestricted one only when it refuses and `allow_pickle`. The
    file is passed open, not by name: torch.load would pick a reader by the name's suffix."""
    with warnings.catch_warnings(), path.open("rb") as handle:
        warnings.simplefilter("ignore")  # torch's advice about pickle protocols; our errors are sentences
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if not allow_pickle:
                raise NeedsCode() from None
        handle.seek(0)
        return torch.load(handle, map_location="cpu", weights_only=False)


def _tensors(state: object) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a state dict, or one under "state_dict" (Lightning checkpoints)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def pickle_refusal(flag: str, path: Path, allow_pickle_offered: bool = True) -> ModelFileError:
    how = (
        "pass --allow-pickle if you trust the file"
        if allow_pickle_offered
        else "--allow-pickle does not apply here"
    )
    return ModelFileError(
        f"{flag} {path} is a pickle checkpoint that needs code to load (torch's tensor-only loader refused it), "
        f"and loading it runs arbitrary code; convert it to .safetensors or {how}"
    )


def read_checkpoint(
    path: Path, allow_pickle: bool, flag_owner: str = "--model", allow_pickle_offered: bool = True
) -> dict[str, torch.Tensor]:
    """The tensors of one weights file, decided by content (module docstring); ModelFileError sentences."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(
            f"{flag_owner} {path} does not exist; give a .safetensors file or a diffusers folder"
        )
    if not path.is_file():
        raise ModelFileError(f"{flag_owner} {path} is not a regular file; give a weights file")
    try:
        if safetensors_header(path) is not None:
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif _is_zip(path) or _starts_with_pickle_protocol(path):
            state = _torch_load(path, allow_pickle)
        else:
            raise ModelFileError(f"{path} is neither a safetensors file nor a PyTorch weights file")
    except NeedsCode:
        raise pickle_refusal(flag_owner, path, allow_pickle_offered) from None
    except ModelFileError as error:
        raise ModelFileError(f"{flag_owner} {error}") from None
    except Exception as error:  # a corrupt or foreign file: one sentence, no traceback
        raise ModelFileError(
            f"{flag_owner} {path} could not be read as a checkpoint ({_first_line(error)}); "
            "give a .safetensors or PyTorch weights file"
        ) from None
    tensors = _tensors(state)
    if not tensors:
        raise ModelFileError(f"{flag_owner} {path} holds no tensors; give a weights file")
    return tensors


def folder_use_safetensors(folder: Path, flag: str) -> bool:
    """Vet the weight files a diffusers/transformers `from_pretrained` would read in one component folder and
    return its `use_safetensors`: True when the folder has `.safetensors` weights (the libraries then read
    only those, and parsing safetensors runs no code); otherwise every `.bin` weights file is checked by
    content here with torch's restricted unpickler (the libraries read them the same way), False."""
    safetensors = [p for p in sorted(folder.glob("*.safetensors")) if p.is_file()]
    for weights in safetensors:
        try:
            header = safetensors_header(weights)
        except ModelFileError as error:
            raise ModelFileError(f"{flag} {error}") from None
        if header is None:
            raise ModelFileError(f"{flag} {weights} is named .safetensors but is not a safetensors file")
    if safetensors:
        return True
    for weights in sorted(folder.glob("*.bin")):
        if not weights.is_file():
            continue
        try:
            if safetensors_header(weights) is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.load(str(weights), map_location="cpu", weights_only=True, mmap=_is_zip(weights))
        except pickle.UnpicklingError:
            raise ModelFileError(
                f"{flag} {weights} is a pickle that needs code to load; the weights of a model folder are "
                "only read tensor-only (--allow-pickle does not apply): convert them to .safetensors"
            ) from None
        except ModelFileError:
            raise
        except Exception as error:
            raise ModelFileError(
                f"{flag} {weights} could not be read as weights ({type(error).__name__})"
            ) from None
    return False


def _is_zip(path: Path) -> bool:
    """torch.save's format since torch 1.6: a zip archive."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _starts_with_pickle_protocol(path: Path) -> bool:
    """torch.save's legacy format and pickles of protocol 2 and later start with the PROTO opcode."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
