"""`rerender export` as a real process, and `--backend` selection with the reasons for every rejection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_models
import torch
from rerender.engines.onnx_backend import ExportManifest
from rerender.engines.select import Request, explain, select_networks
from rerender.filter.errors import UsageError


def _rerender(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rerender.filter.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    components = tiny_models.build_components()
    model = tiny_models.write_diffusers_folder(root / "model", components)
    lora = tiny_models.write_lora(root / "style.safetensors", components)
    out = root / "engines"
    result = _rerender(
        "export", "--model", str(model), "--lora", f"{lora}:0.5", "--out", str(out), "--onnx-only",
        "--min-size", "64", "--opt-size", "64x64", "--max-size", "128x128",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root, model, lora, out, result.stdout


def test_export_cli_writes_checked_graphs_and_reports_each_network(export_dir):
    _, model, lora, out, stdout = export_dir
    for name in ("text_encoder", "vae_encoder", "vae_decoder", "unet"):
        assert (out / f"{name}.onnx").is_file()
        assert any(
            line.startswith("[") and f"] {name}: " in line and " s, " in line for line in stdout.splitlines()
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp32"  # auto precision with --onnx-only
    assert manifest["loras"] == [[str(lora.resolve()), 0.5]]
    assert manifest["max_size"] == [128, 128]


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


def _request(export_dir, **changes) -> Request:
    _, model, lora, _, _ = export_dir
    fields = {"model": str(model), "loras": ((str(lora), 0.5),), "size": (64, 64), "device": "cpu"}
    fields.update(changes)
    return Request(**fields)


def test_auto_falls_back_to_torch_and_says_why_for_each_higher_backend(export_dir):
    _, _, _, out, _ = export_dir
    sentinel = object()
    selection = select_networks("auto", _request(export_dir), out, lambda: sentinel)
    assert selection.backend == "torch" and selection.networks is sentinel
    assert len(selection.rejected) == 2
    assert selection.rejected[0].startswith("TensorRT: ")
    assert selection.rejected[1].startswith("onnxruntime-CUDA: ")
    assert "rejected" in selection.describe()


def test_explain_on_a_cpu_machine_names_the_missing_pieces(export_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, _, _, out, _ = export_dir
    reasons = dict(explain(out, _request(export_dir, device="auto")))
    assert "not installed" in reasons["tensorrt"] or "no CUDA device" in reasons["tensorrt"]
    assert "CUDA" in reasons["onnxruntime-cuda"]
    assert reasons["torch"] is None


def test_explicit_onnxruntime_serves_the_export_on_cpu(export_dir):
    _, _, _, out, _ = export_dir
    selection = select_networks("onnxruntime", _request(export_dir), out, lambda: pytest.fail("torch loaded"))
    assert (selection.backend, selection.device) == ("onnxruntime", "cpu")
    ids = selection.networks.tokenize(["a cat"])
    assert selection.networks.text_encoder(ids).shape == (1, 77, 32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loras": ()}, "LoRA set"),
        ({"size": (192, 64)}, "engine profile 64x64..128x128, got 192x64"),
        ({"freeu": True}, "--freeu"),
    ],
)
def test_stale_or_unfit_exports_are_refused_with_the_reason(export_dir, changes, message):
    _, _, _, out, _ = export_dir
    with pytest.raises(UsageError, match="onnxruntime cannot serve") as info:
        select_networks("onnxruntime", _request(export_dir, **changes), out, lambda: None)
    assert message in str(info.value)


def test_explicit_tensorrt_without_gpu_is_a_usage_error(export_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, _, _, out, _ = export_dir
    with pytest.raises(UsageError, match="--backend tensorrt cannot serve: TensorRT: "):
        select_networks("tensorrt", _request(export_dir, device="auto"), out, lambda: None)


def test_manifest_roundtrip(export_dir):
    _, _, _, out, _ = export_dir
    manifest = ExportManifest.load(out)
    assert set(manifest.specs()) == {"text_encoder", "vae_encoder", "vae_decoder", "unet"}


def test_info_lists_engines_and_why_they_do_not_fit_here(export_dir, tmp_path, capsys):
    import shutil

    _, _, _, out, _ = export_dir
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
