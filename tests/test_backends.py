"""onnxruntime backend vs torch backend, network by network, through the runtime contract (runtime.py).

One dynamic graph per network serves two sizes (64x64 and 128x64 pixels); the UNet is compared with its
ControlNet residual inputs and its cross-frame state inputs/outputs, with a mask that mixes cross-frame and
plain layers. fp32 graphs must match torch within 1e-4.
"""

from __future__ import annotations

import warnings

import pytest
import tiny_models
import torch
from rerender.engines.loading import load_bundle
from rerender.engines.onnx_backend import BackendUnavailable, load_onnx_networks
from rerender.engines.runtime import ReferenceStates, cross_frame_mask
from rerender.engines.specs import SizeRange
from rerender.engines.torch_backend import torch_networks
from rerender.export.bundle import ExportPlan, export_bundle

SIZES = [(64, 64), (128, 64)]
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    components = tiny_models.build_components()
    model = str(tiny_models.write_diffusers_folder(root / "model", components))
    controlnet = str(tiny_models.write_controlnet_folder(root / "controlnet", components))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_bundle(
            load_bundle(model, controlnets=((controlnet, 0.7),)),
            root / "export",
            ExportPlan(SizeRange((64, 64), (64, 64), (128, 128))),
            model=model,
            controlnets=(controlnet,),
            progress=lambda _: None,
        )
    reference = torch_networks(load_bundle(model, controlnets=((controlnet, 0.7),)), "cpu", "fp32")
    onnx = load_onnx_networks(root / "export", (0.7,), "cpu", threads=1)
    return reference, onnx, root / "export"


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, what
    error = (a.float() - b.float()).abs().max().item()
    assert error <= TOLERANCE, f"{what}: max abs error {error:.2e}"


def test_text_encoder(backends):
    reference, onnx, _ = backends
    ids = reference.tokenize(["a watercolor painting of a cat", ""])
    assert torch.equal(ids, onnx.tokenize(["a watercolor painting of a cat", ""]))
    _close(onnx.text_encoder(ids), reference.text_encoder(ids), "text embeddings")


@pytest.mark.parametrize("size", SIZES)
def test_vae_encoder_and_decoder(backends, size):
    reference, onnx, _ = backends
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, *size, generator=g) * 2 - 1
    _close(onnx.vae_encoder(image), reference.vae_encoder(image), f"moments {size}")
    latent = torch.randn(1, 4, size[0] // 8, size[1] // 8, generator=g)
    _close(onnx.vae_decoder(latent), reference.vae_decoder(latent), f"image {size}")


def _unet_inputs(networks, size, generator):
    h, w = size[0] // 8, size[1] // 8
    sample = torch.randn(2, 4, h, w, generator=generator)
    timestep = torch.tensor([901, 901])
    embeddings = torch.randn(2, 77, 32, generator=generator)
    hint = torch.rand(2, 3, *size, generator=generator)
    return sample, timestep, embeddings, hint


@pytest.mark.parametrize("size", SIZES)
def test_controlnet(backends, size):
    reference, onnx, _ = backends
    sample, timestep, embeddings, hint = _unet_inputs(reference, size, torch.Generator().manual_seed(2))
    scale = torch.tensor([0.7])
    want = reference.controlnets[0][0](sample, timestep, embeddings, hint, scale)
    got = onnx.controlnets[0][0](sample, timestep, embeddings, hint, scale)
    assert onnx.controlnets[0][1] == 0.7
    assert len(got.down) == len(want.down) == 12
    for i, (a, b) in enumerate(zip(got.down, want.down, strict=True)):
        _close(a, b, f"down residual {i} {size}")
    _close(got.mid, want.mid, f"mid residual {size}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["loose", "off"])
def test_unet_with_cross_frame_states_and_control(backends, size, mode):
    reference, onnx, _ = backends
    g = torch.Generator().manual_seed(3)
    sample, timestep, embeddings, hint = _unet_inputs(reference, size, g)
    layers = reference.unet.layers
    assert layers == onnx.unet.layers
    h, w = size[0] // 8, size[1] // 8
    states = tuple(torch.randn(2, 2 * layer.tokens(h, w), layer.channels, generator=g) for layer in layers)
    refs = ReferenceStates(states, cross_frame_mask(layers, mode))
    control = reference.controlnets[0][0](sample, timestep, embeddings, hint, torch.tensor([0.7]))
    want_noise, want_own = reference.unet(sample, timestep, embeddings, control, refs)
    got_noise, got_own = onnx.unet(sample, timestep, embeddings, control, refs)
    _close(got_noise, want_noise, f"noise {size} {mode}")
    assert len(got_own) == len(want_own) == 9
    for i, (a, b) in enumerate(zip(got_own, want_own, strict=True)):
        _close(a, b, f"own state {i} {size}")
    # Without a ControlNet the graph gets zero residuals, and that equals diffusers adding nothing.
    want_plain, _ = reference.unet(sample, timestep, embeddings, None, refs)
    got_plain, _ = onnx.unet(sample, timestep, embeddings, None, refs)
    _close(got_plain, want_plain, f"noise without control {size}")
    # The states matter: cross-frame attention is in the graph, not only in torch.
    if mode == "loose":
        disabled = ReferenceStates.disabled(layers, 2, h, w, "cpu", torch.float32)
        plain_noise, _ = onnx.unet(sample, timestep, embeddings, control, disabled)
        assert (plain_noise - got_noise).abs().max() > 1e-3


def test_missing_export_directory_says_how_to_make_it(tmp_path):
    with pytest.raises(BackendUnavailable, match="rerender export"):
        load_onnx_networks(tmp_path)


def test_wrong_controlnet_count_is_refused(backends):
    _, _, directory = backends
    with pytest.raises(BackendUnavailable, match="ControlNet scales"):
        load_onnx_networks(directory, (0.5, 0.5))


def _render_anchor_and_keyframe(networks):
    """An anchor and one constrained keyframe (cross-frame attention, shape/pixel fusion, AdaIN) at 64x64."""
    from rerender.filter.sampler.keyframe import (
        AnchorState,
        Conditioning,
        FlowGuide,
        SamplerSettings,
        encode_image,
        encode_text,
        render_anchor,
        render_keyframe,
    )

    settings = SamplerSettings(steps=5)
    g = torch.Generator().manual_seed(5)
    frames = [torch.rand(1, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2)]
    text = encode_text(networks, "a watercolor painting", "blurry")
    conds = [Conditioning(text, ((f + 1) / 2,), encode_image(networks, f)) for f in frames]
    state = AnchorState()
    anchor = render_anchor(networks, settings, conds[0], state, seed=0)
    occluded = torch.zeros(1, 1, 64, 64)
    occluded[..., 20:40, 20:40] = 1.0  # some pixels both warps miss, so both passes run
    flow = torch.full((1, 2, 64, 64), 1.5)
    guide = FlowGuide(flow, occluded, flow, occluded, anchor.image, anchor.image)
    key = render_keyframe(networks, settings, conds[1], state, guide, seed=0)
    return anchor, key


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def test_whole_keyframe_on_onnxruntime_equals_torch(backends):
    reference, onnx, _ = backends
    with torch.no_grad():
        want_anchor, want_key = _render_anchor_and_keyframe(reference)
        got_anchor, got_key = _render_anchor_and_keyframe(onnx)
    assert got_key.passes == want_key.passes == 2
    assert got_key.evaluations == want_key.evaluations
    assert _psnr(got_anchor.image, want_anchor.image) >= 40.0
    assert _psnr(got_key.image, want_key.image) >= 40.0
    # The keyframe differs from the anchor: the comparison is not between two blank images.
    assert _psnr(want_key.image, want_anchor.image) < 30.0
