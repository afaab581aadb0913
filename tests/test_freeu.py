"""FreeU as pre-hooks (engines/freeu.py) against docs/method.md §2.7, on tiny random-weight UNets (CPU)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import tiny_models
import torch
from diffusers import UNet2DConditionModel
from rerender.engines.freeu import FreeUFactors, freeu_sites, install_freeu, set_freeu

SD15_UNET = Path(__file__).resolve().parents[1] / "engines" / "configs" / "sd15" / "unet"

# Three distinct widths like SD1.5's 320/640/1280 (the shared tiny UNet has only two: 16/32), so the b1, b2 and
# untouched blocks all occur at the same output-block indices as in SD1.5.
THREE_WIDTHS = {**tiny_models.UNET_CONFIG, "block_out_channels": [8, 16, 32, 32]}
# Hand-derived from that config (LDM output-block order): backbone h channels entering output blocks 0–11.
THREE_WIDTHS_H = [32] * 7 + [16] * 3 + [8] * 2
FACTORS = FreeUFactors(b1=1.3, b2=1.2, s1=0.7, s2=0.2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def _inputs(size: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, size, size, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    return sample, torch.tensor([300, 700]), text


@torch.no_grad()
def _run(unet, inputs) -> torch.Tensor:
    sample, timestep, text = inputs
    return unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]


# --- golden reference: the method §2.7 formulas written out literally, independent of engines/freeu.py ------------


def _golden_backbone(h: torch.Tensor, b: float) -> torch.Tensor:
    h = h.clone()
    hidden_mean = h.mean(1).unsqueeze(1)
    batch = hidden_mean.shape[0]
    hidden_max = hidden_mean.view(batch, -1).max(dim=-1, keepdim=True).values
    hidden_min = hidden_mean.view(batch, -1).min(dim=-1, keepdim=True).values
    m = (hidden_mean - hidden_min[:, :, None, None]) / (hidden_max - hidden_min)[:, :, None, None]
    half = h.shape[1] // 2
    h[:, :half] = h[:, :half] * ((b - 1) * m + 1)
    return h


def _golden_fourier(x: torch.Tensor, scale: float) -> torch.Tensor:
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    _, _, height, width = freq.shape
    mask = torch.ones(freq.shape)
    crow, ccol = height // 2, width // 2
    mask[..., crow - 1 : crow + 1, ccol - 1 : ccol + 1] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _golden_input(x: torch.Tensor, backbone: int, b: float, s: float) -> torch.Tensor:
    return torch.cat([_golden_backbone(x[:, :backbone], b), _golden_fourier(x[:, backbone:], s)], dim=1)


def _resnets(unet):
    return [resnet for block in unet.up_blocks for resnet in block.resnets]


# --- tests ---------------------------------------------------------------------------------------------------


def test_identity_factors_are_bit_identical_and_removal_restores_the_stock_unet():
    unet = _unet(tiny_models.UNET_CONFIG)
    inputs = _inputs(16)
    stock = _run(unet, inputs)
    hooks = install_freeu(unet, FreeUFactors(1.0, 1.0, 1.0, 1.0))
    assert len(hooks.handles) > 0 and "forward" not in vars(unet)
    assert torch.equal(_run(unet, inputs), stock)
    hooks.remove()
    active = install_freeu(unet, FACTORS)
    assert (_run(unet, inputs) - stock).abs().max() > 1e-3
    active.remove()
    assert torch.equal(_run(unet, inputs), stock)


def test_sd15_config_scales_output_blocks_0_to_6_with_b1_and_7_to_9_with_b2():
    config = UNet2DConditionModel.load_config(SD15_UNET)
    with torch.device("meta"):  # the real SD1.5 architecture, no weights allocated
        unet = UNet2DConditionModel.from_config(config)
    sites = freeu_sites(unet)
    assert [s.output_block for s in sites] == list(range(12))
    assert [s.backbone_channels for s in sites] == [1280] * 7 + [640] * 3 + [320] * 2
    assert [s.level for s in sites] == [1] * 7 + [2] * 3 + [None] * 2
    # Skip channels = the matching down-block outputs, popped in reverse (LDM input blocks 11..0).
    assert [s.skip_channels for s in sites] == [1280] * 5 + [640] * 3 + [320] * 4
    hooks = install_freeu(unet, FACTORS)
    assert len(hooks.handles) == 2 + 10  # the UNet's residual pre/post hooks + 10 resnets
    hooked = [r for r in _resnets(unet) if r._forward_pre_hooks]
    assert [r.in_channels for r in hooked] == [2560] * 5 + [1920] * 2 + [1280, 960, 960]
    assert [h.backbone_channels for r in hooked for h in r._forward_pre_hooks.values()] == [1280] * 7 + [
        640
    ] * 3
    assert [(h.b, h.s) for r in hooked for h in r._forward_pre_hooks.values()] == [(1.3, 0.7)] * 7 + [
        (1.2, 0.2)
    ] * 3


def test_each_block_matches_the_formulas_applied_to_captured_h_and_skip():
    unet = _unet(THREE_WIDTHS)
    stock = copy.deepcopy(unet)
    assert [s.backbone_channels for s in freeu_sites(unet)] == THREE_WIDTHS_H
    install_freeu(unet, FACTORS)
    captured: dict[int, tuple] = {}
    resnets = _resnets(unet)
    for index, resnet in enumerate(resnets):
        # prepend=True: runs before FreeU's pre-hook, so it sees the raw cat([h, skip]); the forward hook
        # sees the block's output after FreeU.
        resnet.register_forward_pre_hook(
            lambda m, args, i=index: captured.setdefault(i, {}).update(x=args[0], temb=args[1]), prepend=True
        )
        resnet.register_forward_hook(lambda m, args, out, i=index: captured[i].update(y=out))
    inputs = _inputs(16)
    _run(unet, inputs)
    stock_resnets = _resnets(stock)
    for index, backbone in enumerate(THREE_WIDTHS_H):
        x, temb, y = captured[index]["x"], captured[index]["temb"], captured[index]["y"]
        if index <= 6:
            expected_input = _golden_input(x, backbone, FACTORS.b1, FACTORS.s1)
        elif index <= 9:
            expected_input = _golden_input(x, backbone, FACTORS.b2, FACTORS.s2)
        else:
            expected_input = x
        with torch.no_grad():
            expected = stock_resnets[index](expected_input, temb)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5, msg=f"output block {index}")
        if index <= 9:  # FreeU really changed these blocks
            assert (y - stock_resnets[index](x, temb)).abs().max() > 1e-4


def test_whole_unet_matches_a_golden_hooked_stock_unet():
    unet = _unet(THREE_WIDTHS)
    golden = copy.deepcopy(unet)
    factors = [(FACTORS.b1, FACTORS.s1)] * 7 + [(FACTORS.b2, FACTORS.s2)] * 3
    for index, (resnet, (b, s)) in enumerate(zip(_resnets(golden), factors, strict=False)):
        backbone = THREE_WIDTHS_H[index]
        resnet.register_forward_pre_hook(
            lambda m, args, c=backbone, b=b, s=s: (_golden_input(args[0], c, b, s), *args[1:])
        )
    install_freeu(unet, FACTORS)
    inputs = _inputs(16)
    torch.testing.assert_close(_run(unet, inputs), _run(golden, inputs), atol=1e-5, rtol=1e-5)


def test_a_one_pixel_bottom_level_stays_finite():
    # 8×8 latents (64-pixel frames) reach the widest level at 1×1: the reference's min-max gives 0/0 there.
    unet = _unet(tiny_models.UNET_CONFIG)
    install_freeu(unet, FACTORS)
    assert torch.isfinite(_run(unet, _inputs(8))).all()


def test_installing_twice_is_refused_and_set_freeu_replaces():
    unet = _unet(tiny_models.UNET_CONFIG)
    install_freeu(unet, FACTORS)
    with pytest.raises(ValueError, match="already installed"):
        install_freeu(unet, FACTORS)
    other = FreeUFactors(1.1, 1.2, 1.0, 0.2)
    hooks = set_freeu(unet, other)
    assert hooks is not None and hooks.factors == other
    assert sum(len(r._forward_pre_hooks) for r in _resnets(unet)) == len(hooks.handles) - 2
    assert set_freeu(unet, None) is None
    assert sum(len(r._forward_pre_hooks) for r in _resnets(unet)) == 0
    assert not unet._forward_pre_hooks and not unet._forward_hooks


def test_only_the_unets_own_skip_is_filtered_and_the_controlnet_residual_is_added_after():
    # The authors' UNet forward filters hs.pop() and then adds control.pop(); diffusers adds the residual to
    # the skip before the up blocks, so the hook must not low-pass the residual with the skip.
    unet = _unet(tiny_models.UNET_CONFIG)
    controlnet = tiny_models.build_components().controlnet
    sample, timestep, text = _inputs(16)
    image = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        down, mid = controlnet(sample, timestep, text, image, 1.0, return_dict=False)
    install_freeu(unet, FACTORS)
    own_skips: list[torch.Tensor] = []  # diffusers' down_block_res_samples, before the residuals are added
    unet.conv_in.register_forward_hook(lambda m, args, out: own_skips.append(out))
    for block in unet.down_blocks:
        block.register_forward_hook(lambda m, args, out: own_skips.extend(out[1]))
    raw: dict[int, torch.Tensor] = {}
    reaching: dict[int, torch.Tensor] = {}
    for index, resnet in enumerate(_resnets(unet)):
        resnet.register_forward_pre_hook(lambda m, args, i=index: raw.__setitem__(i, args[0]), prepend=True)
        resnet.register_forward_pre_hook(lambda m, args, i=index: reaching.__setitem__(i, args[0]))
    with torch.no_grad():
        unet(
            sample, timestep, encoder_hidden_states=text,
            down_block_additional_residuals=list(down), mid_block_additional_residual=mid,
        )  # fmt: skip
    sites = freeu_sites(unet)
    assert len(own_skips) == len(down) == len(sites)
    checked = 0
    for site in sites:
        if site.level is None:
            continue
        skip_index = len(sites) - 1 - site.output_block
        own, residual = own_skips[skip_index], down[skip_index]
        b, s = (FACTORS.b1, FACTORS.s1) if site.level == 1 else (FACTORS.b2, FACTORS.s2)
        h = raw[site.output_block][:, : site.backbone_channels]
        assert torch.allclose(raw[site.output_block][:, site.backbone_channels :], own + residual)
        expected = torch.cat([_golden_backbone(h, b), _golden_fourier(own, s) + residual], dim=1)
        torch.testing.assert_close(reaching[site.output_block], expected, atol=1e-5, rtol=1e-5)
        # The residual really is large enough that filtering it too would have shown.
        wrong = _golden_fourier(own + residual, s)
        assert (wrong - expected[:, site.backbone_channels :]).abs().max() > 1e-3
        checked += 1
    assert checked == sum(site.level is not None for site in sites) > 0
