"""`rerender export` and `rerender run --backend ... --engines DIR` as real processes, and backend selection.

One export of the tiny model (+ ControlNet, + LoRA at 0.5) by the CLI serves every test here: the run on
onnxruntime against the run on torch (the sampler, the filter and the CLI unchanged), `--backend`
selection with the reason for every rejected backend, stale or unfit exports refused, `rerender info
--engines`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import media
import numpy as np
import pytest
import tiny_models
import torch
from rerender.engines.onnx_backend import ExportManifest
from rerender.engines.select import Request, explain, select_networks
from rerender.engines.specs import SizeRange
from rerender.filter.errors import UsageError
from rerender.filter.geometry import ProcessingGeometry

pytestmark = pytest.mark.skipif(
    getattr(tiny_models, "TOKENIZER_MISSING", None) is not None,
    reason=str(getattr(tiny_models, "TOKENIZER_MISSING", "")),
)

RERENDER = str(Path(sys.executable).with_name("rerender"))


def _rerender(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([RERENDER, *args], capture_output=True, text=True, env=env, timeout=600)


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    components = tiny_models.build_components()
    files = {
        "model": tiny_models.write_diffusers_folder(root / "sd", components),
        "controlnet": tiny_models.write_controlnet_folder(root / "cn", components),
        "lora": tiny_models.write_lora(root / "style.safetensors", components),
        "clip": media.write_clip(root / "clip.mp4", width=80, height=64, frames=5, audio=False),
        "engines": root / "engines",
        "root": root,
    }
    result = _rerender(
        "export", "--model", str(files["model"]), "--controlnet", str(files["controlnet"]),
        "--lora", f"{files['lora']}:0.5", "--out", str(files["engines"]), "--onnx-only",
        "--min-size", "64", "--opt-size", "64x64", "--max-size", "128x128",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    files["export_stdout"] = result.stdout
    return files


def test_export_cli_writes_checked_graphs_and_reports_each_network(files):
    out = files["engines"]
    for name in ("text_encoder", "vae_encoder", "vae_decoder", "unet", "controlnet_0"):
        assert (out / f"{name}.onnx").is_file()
        lines = files["export_stdout"].splitlines()
        assert any(line.startswith("[") and f"] {name}: " in line and " s, " in line for line in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp32"  # auto precision with --onnx-only
    assert manifest["loras"] == [[str(files["lora"].resolve()), 0.5]]
    assert manifest["max_size"] == [128, 128]


def _run(files, out: Path, *backend: str) -> subprocess.CompletedProcess:
    return _rerender(
        "run", "-i", str(files["clip"]), "-o", str(out), "--model", str(files["model"]),
        "--controlnet", f"{files['controlnet']}:0.7", "--lora", f"{files['lora']}:0.5", "--prompt", "a cat",
        "--size", "64", "-K", "2", "--steps", "4", "--progress", "none", *backend,
    )  # fmt: skip


def test_run_on_onnxruntime_equals_run_on_torch(files):
    torch_out, ort_out = files["root"] / "torch.mp4", files["root"] / "ort.mp4"
    # The reference run is `auto` on the CPU with the engines given: it must choose torch and say why not
    # the two backends above it.
    reference = _run(files, torch_out, "--engines", str(files["engines"]), "--device", "cpu")
    assert reference.returncode == 0, reference.stderr[-2000:]
    line = next(line for line in reference.stderr.splitlines() if "backend " in line)
    assert (
        "backend torch" in line
        and "TensorRT: --device cpu" in line
        and "onnxruntime-CUDA: --device cpu" in line
    )
    result = _run(files, ort_out, "--backend", "onnxruntime", "--engines", str(files["engines"]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend onnxruntime on cpu" in result.stderr
    want, got = _frames(torch_out), _frames(ort_out)
    assert len(got) == len(want) == 5
    errors = [np.abs(a.astype(float) - b).mean() for a, b in zip(got, want, strict=True)]
    # Two torch runs of this pipeline already differ by up to ~3 levels on average (measured: the filter's
    # output is not bit-reproducible across processes, and the patch search amplifies last-bit changes on the
    # noise-like images of random weights); a wrong graph differs by tens of levels. Keyframe-level parity
    # with PSNR >= 40 dB is asserted in-process in test_backends.py.
    assert max(errors) < 8.0, errors


def test_run_with_an_export_of_another_lora_scale_is_refused(files):
    out = files["root"] / "stale.mp4"
    result = _rerender(
        "run", "-i", str(files["clip"]), "-o", str(out), "--model", str(files["model"]),
        "--lora", f"{files['lora']}:0.9", "--controlnet", str(files["controlnet"]), "--size", "64",
        "--backend", "onnxruntime", "--engines", str(files["engines"]), "--progress", "none",
    )  # fmt: skip
    assert result.returncode == 2
    assert "LoRA set" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-size", "60"], "multiples of 64"),
        (["--max-size", "big"], "HEIGHTxWIDTH"),
        (["--precision", "int8"], "invalid choice"),
    ],
)
def test_export_cli_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    status = _main_in_process("export", "--model", "m", "--out", str(tmp_path / "o"), "--onnx-only", *args)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_export_cli_without_onnx_only_says_why_engines_cannot_be_built(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine can build engines")
    status = _main_in_process("export", "--model", "m", "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert status == 2
    assert "--onnx-only" in err and "TensorRT" in err
    assert len(err.strip().splitlines()) == 1


def _main_in_process(*args: str) -> int:
    """The CLI entry point in this process (argparse exits with status 2 on its own errors)."""
    from rerender.filter.cli import main

    try:
        return main(list(args))
    except SystemExit as exit_:
        return int(exit_.code)


def _request(files, **changes) -> Request:
    fields = {
        "model": str(files["model"]),
        "loras": ((str(files["lora"]), 0.5),),
        "controlnets": ((str(files["controlnet"]), 0.7),),
        "size": (64, 64),
        "device": "cpu",
    }
    fields.update(changes)
    return Request(**fields)


def test_auto_falls_back_to_torch_and_says_why_for_each_higher_backend(files):
    out = files["engines"]
    sentinel = object()
    selection = select_networks("auto", _request(files), out, lambda: sentinel)
    assert selection.backend == "torch" and selection.networks is sentinel
    assert len(selection.rejected) == 2
    assert selection.rejected[0].startswith("TensorRT: ")
    assert selection.rejected[1].startswith("onnxruntime-CUDA: ")
    assert "rejected" in selection.describe()


def test_explain_on_a_cpu_machine_names_the_missing_pieces(files):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = files["engines"]
    reasons = dict(explain(out, _request(files, device="auto")))
    assert "not installed" in reasons["tensorrt"] or "no CUDA device" in reasons["tensorrt"]
    assert "CUDA" in reasons["onnxruntime-cuda"]
    assert reasons["torch"] is None


def test_explicit_onnxruntime_serves_the_export_on_cpu(files):
    out = files["engines"]
    selection = select_networks("onnxruntime", _request(files), out, lambda: pytest.fail("torch loaded"))
    assert (selection.backend, selection.device) == ("onnxruntime", "cpu")
    ids = selection.networks.tokenize(["a cat"])
    assert selection.networks.text_encoder(ids).shape == (1, 77, 32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loras": ()}, "LoRA set"),
        ({"controlnets": ()}, "ControlNet set"),
        ({"size": (192, 64)}, "canvas 192x64 (height x width) is outside the exported sizes 64x64..128x128"),
        ({"freeu": True}, "--freeu"),
    ],
)
def test_stale_or_unfit_exports_are_refused_with_the_reason(files, changes, message):
    out = files["engines"]
    with pytest.raises(UsageError, match="onnxruntime cannot serve") as info:
        select_networks("onnxruntime", _request(files, **changes), out, lambda: None)
    assert message in str(info.value)


def test_explicit_tensorrt_without_gpu_is_a_usage_error(files):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = files["engines"]
    with pytest.raises(UsageError, match="--backend tensorrt cannot serve: TensorRT: "):
        select_networks("tensorrt", _request(files, device="auto"), out, lambda: None)


def test_manifest_roundtrip(files):
    out = files["engines"]
    manifest = ExportManifest.load(out)
    assert set(manifest.specs()) == {"text_encoder", "vae_encoder", "vae_decoder", "unet", "controlnet_0"}


def test_info_lists_engines_and_why_they_do_not_fit_here(files, tmp_path, capsys):
    out = files["engines"]
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    target = "10.13.0|NVIDIA GeForce RTX 4090|8.9"
    (copy / "engines.json").write_text(json.dumps({target: {"unet": "engines/unet.x.y.plan"}}))
    assert _main_in_process("info", "--json", "--engines", str(copy)) == 0
    components = json.loads(capsys.readouterr().out)["components"]
    assert components["onnx graphs"]["status"] == "ok"
    assert components["onnx graphs"]["details"]["sizes"] == "64x64..128x128"
    trt_row = components["tensorrt 10.13.0 NVIDIA GeForce RTX 4090 sm8.9"]
    assert trt_row["status"] == "unavailable"
    assert "missing or damaged" in trt_row["reason"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in trt_row["reason"]
        assert components["onnxruntime-cuda"]["status"] == "unavailable"
    assert _main_in_process("info", "--engines", str(tmp_path / "nowhere")) == 0
    assert "is not a directory" in capsys.readouterr().out


# Common video shapes (height, width) and the processing canvas `rerender run` gives them at --size 512.
COMMON_INPUTS = {
    "1080p 16:9": (1080, 1920),
    "720p 16:9": (720, 1280),
    "2160p 16:9": (2160, 3840),
    "portrait 9:16": (1920, 1080),
    "4:3": (1080, 1440),
    "3:4": (1440, 1080),
    "square": (1080, 1080),
}


def _canvas(height: int, width: int, fit: str = "pad") -> tuple[int, int]:
    return ProcessingGeometry.for_input(height, width, 512, fit).canvas


def test_default_export_sizes_cover_the_canvas_of_common_inputs_at_the_default_size():
    sizes = SizeRange()
    assert _canvas(1080, 1920) == (512, 960) and _canvas(1920, 1080) == (960, 512)
    for name, (height, width) in COMMON_INPUTS.items():
        for fit in ("pad", "crop"):
            canvas = _canvas(height, width, fit)
            assert sizes.misfit(*canvas) is None, (name, fit, canvas)


@pytest.fixture(scope="module")
def default_export(files):
    """`rerender export` with no size flags: the default profile."""
    out = files["root"] / "default_engines"
    result = _rerender(
        "export", "--model", str(files["model"]), "--controlnet", str(files["controlnet"]),
        "--lora", f"{files['lora']}:0.5", "--out", str(out), "--onnx-only",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_a_default_export_serves_a_16_9_input_at_the_default_size(files, default_export):
    manifest = json.loads((default_export / "manifest.json").read_text())
    assert (manifest["min_size"], manifest["opt_size"], manifest["max_size"]) == (
        [256, 256],
        [512, 960],
        [960, 960],
    )
    canvas = _canvas(1080, 1920)
    # onnxruntime on the CPU stands in for TensorRT: the same manifest and size check decide both.
    selection = select_networks(
        "onnxruntime", _request(files, size=canvas), default_export, lambda: pytest.fail("torch loaded")
    )
    assert (selection.backend, selection.device) == ("onnxruntime", "cpu")
    assert not any("canvas" in reason for reason in selection.rejected)


def test_a_16_9_run_outside_the_exported_sizes_names_the_canvas(files, tmp_path):
    clip = media.write_clip(tmp_path / "wide.mp4", width=1920, height=1080, frames=2, audio=False)
    out = tmp_path / "out.mp4"
    common = (
        "run", "-i", str(clip), "-o", str(out), "--model", str(files["model"]),
        "--controlnet", f"{files['controlnet']}:0.7", "--lora", f"{files['lora']}:0.5", "--prompt", "a cat",
        "--progress", "none", "--engines", str(files["engines"]),
    )  # fmt: skip
    # The export of this module serves 64x64..128x128; the 1080p input's canvas at --size 512 is 512x960.
    result = _rerender(*common, "--backend", "onnxruntime")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "canvas 512x960 (height x width) is outside the exported sizes 64x64..128x128" in result.stderr
    assert "--max-size 512x960" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    # `auto` falls back to torch; its explanation says the export would not have served this canvas either.
    sentinel = object()
    selection = select_networks("auto", _request(files, size=(512, 960)), files["engines"], lambda: sentinel)
    assert selection.networks is sentinel
    assert all("canvas 512x960" in reason for reason in selection.rejected), selection.rejected
    assert "canvas 512x960" in selection.describe()
