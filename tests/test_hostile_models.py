"""Hostile model files: a pickle whose unpickling would create a marker file, under every name a suffix
list misses, through every flag that reads weights. Whether a file is safe is decided by its content
(engines/loading.py): it is refused with one sentence naming --allow-pickle, and the marker never appears.
Plain state dicts in pickle containers (.pth/.bin, as lllyasviel's and torchvision's files are) still load."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import media
import pytest
import tiny_models
import torch
from rerender.engines import control, flow_raft, loading
from rerender.filter.errors import InputError

pytestmark = [
    pytest.mark.skipif(tiny_models.TOKENIZER_MISSING is not None, reason=str(tiny_models.TOKENIZER_MISSING)),
    pytest.mark.usefixtures("one_torch_thread"),
]

RERENDER = str(Path(sys.executable).with_name("rerender"))
NAMES = ["x.pkl", "x.pickle", "x.ckpt.bak", "x.pth.tar", "x", "x.ckpt ", "x.ckpt.", "x.safetensors", "x.pth"]


class _CreatesMarker:
    """Unpickling this calls open(marker, "w"): the file appears only if the loader ran code from the data."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, marker: Path, container: str) -> Path:
    """A payload: "pickle" (plain pickle.dumps) or "torch" (torch.save zip with real tensors around it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if container == "pickle":
        path.write_bytes(pickle.dumps({"weight": _CreatesMarker(marker)}))
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "callback": _CreatesMarker(marker)}, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-models")
    c = tiny_models.build_components()
    return {
        "folder": tiny_models.write_diffusers_folder(root / "sd", c),
        "controlnet": tiny_models.write_controlnet_folder(root / "cn", c),
        "components": c,
        "clip": media.write_clip(root / "clip.mp4", width=64, height=64, frames=3, audio=False),
    }


def _refused(call, marker: Path, match: str = "--allow-pickle") -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert match in message and "\n" not in message, message
    assert not marker.exists(), "the payload ran"
    return message


@pytest.mark.parametrize("container", ["pickle", "torch"])
@pytest.mark.parametrize("name", NAMES)
def test_payload_is_refused_under_every_name(tmp_path, models, name, container):
    marker = tmp_path / "MARKER"
    payload = write_payload(tmp_path / "payloads" / name, marker, container)
    message = _refused(lambda: loading.read_checkpoint(payload, allow_pickle=False), marker)
    assert "needs code to load" in message
    _refused(lambda: loading.load_bundle(str(payload)), marker)


@pytest.mark.parametrize("name", ["x.pkl", "x.ckpt ", "x"])
def test_payload_is_refused_through_every_flag(tmp_path, models, name):
    marker = tmp_path / "MARKER"
    payload = write_payload(tmp_path / "payloads" / name, marker, "torch")
    folder = str(models["folder"])
    _refused(lambda: loading.load_bundle(folder, loras=((str(payload), 1.0),)), marker, "--lora")
    _refused(lambda: loading.load_bundle(folder, controlnets=((str(payload), 0.7),)), marker, "--controlnet")
    _refused(lambda: loading.load_bundle(folder, vae=str(payload)), marker, "--vae")
    _refused(lambda: control.make_control(f"hed:{payload}"), marker, "--control hed:")
    # RAFT weights are read before torchvision is needed; --allow-pickle is never offered for them.
    message = _refused(lambda: flow_raft._read_state(payload), marker, "--flow raft:")
    assert "--allow-pickle does not apply" in message


@pytest.mark.parametrize("container", ["pickle", "torch"])
def test_payload_inside_a_model_folder_is_refused(tmp_path, models, container):
    marker = tmp_path / "MARKER"
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(models["folder"], folder)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    write_payload(folder / "unet" / "diffusion_pytorch_model.bin", marker, container)
    message = _refused(lambda: loading.load_bundle(str(folder)), marker, "convert them to .safetensors")
    # The libraries read folder weights tensor-only, so --allow-pickle cannot make them run code either.
    _refused(lambda: loading.load_bundle(str(folder), allow_pickle=True), marker, "does not apply")
    assert "diffusion_pytorch_model.bin" in message
    # A pickle named .safetensors inside a folder is not read as anything.
    cn = tmp_path / "cn"
    shutil.copytree(models["controlnet"], cn)
    write_payload(next(cn.glob("*.safetensors")), marker, container)
    _refused(lambda: loading.load_controlnet(str(cn), False), marker, "not a safetensors file")
    # A transformers depth-model folder is vetted the same way.
    depth = tmp_path / "depth"
    depth.mkdir()
    (depth / "config.json").write_text("{}")
    write_payload(depth / "pytorch_model.bin", marker, container)
    _refused(lambda: control.make_control(f"depth:{depth}"), marker, "convert them to .safetensors")


def test_plain_state_dicts_load_without_allow_pickle(tmp_path, models):
    c = models["components"]
    # A diffusers folder saved with .bin weights (torch.save of plain state dicts) loads tensor-only.
    folder = tmp_path / "sd-bin"
    c.unet.save_pretrained(folder / "unet", safe_serialization=False)
    c.vae.save_pretrained(folder / "vae", safe_serialization=False)
    c.text_encoder.config.save_pretrained(folder / "text_encoder")  # transformers 5 writes only safetensors
    torch.save(c.text_encoder.state_dict(), str(folder / "text_encoder" / "pytorch_model.bin"))
    assert not list(folder.rglob("*.safetensors")) and list(folder.rglob("*.bin"))
    bundle = loading.load_bundle(str(folder))
    torch.testing.assert_close(bundle.unet.conv_in.weight, c.unet.conv_in.weight)
    # A legacy (non-zip) torch file and a zip one, under any name.
    for name, zip_format in (("hed.pth", True), ("hed-legacy.pth.tar", False), ("hed", True)):
        path = tmp_path / name
        torch.save(control.HEDNetwork().state_dict(), str(path), _use_new_zipfile_serialization=zip_format)
        assert control.make_control(f"hed:{path}").name == f"hed:{path}"


def test_safetensors_is_recognised_by_a_valid_bounded_header(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "weights.pth"  # the name does not matter
    save_file({"w": torch.ones(3)}, str(good))
    assert loading.read_checkpoint(good, False)["w"].tolist() == [1.0, 1.0, 1.0]
    # A header that announces JSON but is not valid: a damaged file, one sentence.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 20) + b'{"w": {"dtype": 5}}  ' + b"\0" * 8)
    with pytest.raises(InputError, match="header is not valid"):
        loading.read_checkpoint(bad, False)
    # Offsets past the end of the file.
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1600]}}'
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(InputError, match="header is not valid"):
        loading.read_checkpoint(bad, False)
    # A length beyond the file (or beyond the bound) is not a safetensors header at all.
    huge = tmp_path / "huge"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{" + b"\0" * 64)
    assert loading.safetensors_header(huge) is None
    with pytest.raises(InputError, match="neither a safetensors file nor a PyTorch weights file"):
        loading.read_checkpoint(huge, False)
    # A FIFO is not opened (it would block): not a regular file.
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        loading.read_checkpoint(fifo, False)


# --- through the real command line ----------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [RERENDER, "run", *args, "--progress", "none"], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.parametrize(
    ("name", "flag"),
    [("x.ckpt ", "--model"), ("x", "--model"), ("x.pkl", "--lora"), ("x.pth.tar", "--controlnet"), ("x.pickle", "--control")],
)  # fmt: skip
def test_cli_refuses_a_payload_with_exit_2(tmp_path, models, name, flag):
    marker = tmp_path / "MARKER"
    payload = write_payload(tmp_path / "payloads" / name, marker, "torch")
    out = tmp_path / "out.mp4"
    args = ["-i", str(models["clip"]), "-o", str(out), "--size", "64", "--steps", "2"]
    if flag == "--model":
        args += ["--model", str(payload)]
    elif flag == "--control":
        args += ["--model", str(models["folder"]), "--controlnet", str(models["controlnet"])]
        args += ["--control", f"hed:{payload}"]
    else:
        args += ["--model", str(models["folder"]), flag, str(payload)]
    result = _run(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--allow-pickle" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no partial output either


def test_protocol_0_pickle_is_not_read_at_all(tmp_path):
    marker = tmp_path / "MARKER"
    payload = tmp_path / "old.ckpt"
    payload.write_bytes(pickle.dumps({"weight": _CreatesMarker(marker)}, protocol=0))
    for allow in (False, True):
        with pytest.raises(InputError, match="neither a safetensors file nor a PyTorch weights file"):
            loading.read_checkpoint(payload, allow)
    assert not marker.exists()
