"""TensorRT: engine build from the exported graphs, cache reuse/rebuild/refit, and parity with onnxruntime.

Every test here needs an NVIDIA GPU and the tensorrt package (`gpu` marker: skipped with the reason
elsewhere). On CPU-only machines `test_tensorrt_reason_without_gpu` checks the reason sentence instead.
"""

from __future__ import annotations

import warnings

import pytest
import tiny_models
import torch
from rerender.engines.loading import load_bundle
from rerender.engines.onnx_backend import ExportManifest, load_onnx_networks
from rerender.engines.runtime import ReferenceStates, cross_frame_mask
from rerender.engines.specs import SizeRange
from rerender.engines.tensorrt_backend import tensorrt_unavailable_reason
from rerender.export.bundle import ExportPlan, export_bundle
from rerender.export.cache import EngineCache

SIZES = SizeRange((64, 64), (64, 64), (128, 128))


def test_tensorrt_reason_without_gpu():
    reason = tensorrt_unavailable_reason()
    if torch.cuda.is_available() and reason is None:
        pytest.skip("TensorRT can serve here")
    assert reason.startswith("TensorRT: ")
    assert "not installed" in reason or "no CUDA device" in reason


def _export(root, out, loras=(), precision="fp32"):
    components = tiny_models.build_components()
    model = tiny_models.write_diffusers_folder(root / "model", components)
    controlnet = tiny_models.write_controlnet_folder(root / "controlnet", components)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest, _ = export_bundle(
            load_bundle(str(model), loras=loras, controlnets=((str(controlnet), 0.7),)),
            out,
            ExportPlan(SIZES, precision),
            model=str(model),
            loras=loras,
            controlnets=(str(controlnet),),
            progress=lambda _: None,
        )
    return manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    from rerender.export.bundle import build_engines

    root = tmp_path_factory.mktemp("trt")
    out = root / "export"
    manifest = _export(root, out)
    messages: list[str] = []
    paths = build_engines(out, manifest, device=torch.device("cuda"), progress=messages.append)
    return root, out, manifest, paths, messages


@pytest.mark.gpu
def test_build_then_reuse_from_cache(built):
    from rerender.export.bundle import build_engines

    _, out, manifest, paths, messages = built
    assert sum(": built in " in m for m in messages) == len(manifest.graphs)
    again: list[str] = []
    assert build_engines(out, manifest, device=torch.device("cuda"), progress=again.append) == paths
    assert sum(": cached in " in m for m in again) == len(manifest.graphs)
    assert (out / "engines.json").is_file()
    assert list((out / "engines").glob("timing-*.cache"))


@pytest.mark.gpu
def test_truncated_engine_is_rebuilt(built):
    from rerender.export.bundle import build_engines

    _, out, manifest, paths, _ = built
    data = paths["vae_decoder"].read_bytes()
    paths["vae_decoder"].write_bytes(data[: len(data) // 3])
    messages: list[str] = []
    build_engines(out, manifest, device=torch.device("cuda"), progress=messages.append)
    assert any("vae_decoder: built" in m for m in messages)
    assert EngineCache(out / "engines").valid(paths["vae_decoder"])


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(64, 64), (128, 64)])
def test_tensorrt_matches_onnxruntime(built, size):
    from rerender.engines.tensorrt_backend import load_tensorrt_networks

    _, out, _, _, _ = built
    trt_networks, session = load_tensorrt_networks(out, (0.7,), "cuda")
    ort_networks = load_onnx_networks(out, (0.7,), "cpu")
    try:
        g = torch.Generator().manual_seed(0)
        h, w = size[0] // 8, size[1] // 8
        sample = torch.randn(2, 4, h, w, generator=g)
        timestep = torch.tensor([501.0, 501.0])
        embeddings = torch.randn(2, 77, 32, generator=g)
        hint = torch.rand(2, 3, *size, generator=g)
        layers = ort_networks.unet.layers
        states = tuple(
            torch.randn(2, 2 * layer.tokens(h, w), layer.channels, generator=g) for layer in layers
        )
        refs = ReferenceStates(states, cross_frame_mask(layers, "loose"))

        def run(networks, device):
            def on(t):
                return t.to(device)

            control = networks.controlnets[0][0](
                on(sample), on(timestep), on(embeddings), on(hint), on(torch.tensor([0.7]))
            )
            refs_on = ReferenceStates(tuple(on(s) for s in refs.states), on(refs.mask))
            noise, own = networks.unet(on(sample), on(timestep), on(embeddings), control, refs_on)
            image = networks.vae_decoder(on(sample))
            return [noise, *own, image]

        want = run(ort_networks, "cpu")
        got = run(trt_networks, "cuda")
        torch.cuda.synchronize()
        for a, b in zip(got, want, strict=True):
            assert (a.float().cpu() - b).abs().max().item() < 1e-2  # TF32 kernels are allowed in fp32 engines
        # Outside the profile: a sentence, not a crash.
        with pytest.raises(ValueError, match="outside the engine's profile"):
            trt_networks.vae_decoder(torch.randn(1, 4, 32, 8, device="cuda"))
    finally:
        session.unload()


@pytest.mark.gpu
def test_lora_change_refits_instead_of_rebuilding(built):
    from rerender.export.bundle import build_engines

    root, out, _, _, _ = built
    lora = tiny_models.write_lora(root / "style.safetensors")
    manifest = _export(root, out, loras=((str(lora), 0.8),))
    messages: list[str] = []
    build_engines(out, manifest, device=torch.device("cuda"), progress=messages.append)
    assert any("unet: refitted" in m for m in messages)
    assert any("text_encoder: refitted" in m for m in messages)
    assert any("vae_decoder: cached" in m for m in messages)
    assert ExportManifest.load(out).loras[0][1] == 0.8


@pytest.mark.gpu
def test_fp16_engines_build_from_fp16_graphs(tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    from rerender.engines.tensorrt_backend import load_tensorrt_networks
    from rerender.export.bundle import build_engines

    manifest = _export(tmp_path, tmp_path / "export", precision="fp16")
    build_engines(tmp_path / "export", manifest, device=torch.device("cuda"), progress=lambda _: None)
    networks, session = load_tensorrt_networks(tmp_path / "export", (0.7,), "cuda")
    try:
        assert networks.dtype == torch.float16
        image = networks.vae_decoder(torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16))
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    finally:
        session.unload()
