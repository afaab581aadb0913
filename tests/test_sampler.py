"""The constrained sampler against a reference implementation (diffusers) and the reference formulas
(docs/method.md §1, §2), with tiny random-weight SD1.5-shaped models on the CPU."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import tiny_models
import torch
from rerender.engines.loading import ModelBundle
from rerender.engines.runtime import ReferenceStates, ScheduleConfig, cross_frame_mask
from rerender.engines.tokenizer import clip_tokenizer
from rerender.engines.torch_backend import torch_networks
from rerender.filter.sampler import fusion
from rerender.filter.sampler.color import color_correct
from rerender.filter.sampler.ddim import Constraint, Window
from rerender.filter.sampler.keyframe import (
    AnchorState,
    Conditioning,
    FlowGuide,
    SamplerSettings,
    ShapeGuide,
    decode,
    encode_image,
    encode_text,
    fidelity_encode,
    render_anchor,
    render_keyframe,
    run_pass,
    run_steps,
    start_pass,
)
from rerender.filter.sampler.schedule import ddim_schedule, window_steps

pytestmark = pytest.mark.skipif(
    tiny_models.TOKENIZER_MISSING is not None, reason=str(tiny_models.TOKENIZER_MISSING)
)

SIZE = 64
OFF = (1.0, 1.0)  # a window at the very end: never reached (inclusive: i >= S; strict: none)


def _frame(seed: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8), (9, 9), 3)
    return np.roll(image, shift, axis=1)


def _canny(frame: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.Canny(frame, 50, 100)[..., None], 3, axis=2)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny networks are latency-bound; on a shared 2-core machine several torch threads per test process
    # oversubscribe the cores and run 10-50x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def networks(tokenizer):
    c = tiny_models.build_components()
    bundle = ModelBundle(
        tokenizer, c.text_encoder, c.unet, c.vae, ScheduleConfig(), ((c.controlnet, 0.7),), "tiny"
    )
    return torch_networks(bundle, "cpu", torch.float32)


def _cond(networks, frame: np.ndarray) -> Conditioning:
    text = encode_text(networks, "a cat", "ugly")
    return Conditioning(
        text, (_tensor(_canny(frame)) / 255.0,), encode_image(networks, _tensor(frame) / 127.5 - 1)
    )


def _diffusers_img2img(tokenizer, frame: np.ndarray, steps: int, strength: float, seed: int) -> np.ndarray:
    from diffusers import DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline
    from PIL import Image

    c = tiny_models.build_components()
    scheduler = DDIMScheduler(
        **{k: v for k, v in tiny_models.SCHEDULER_CONFIG.items() if not k.startswith("_")}
    )
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=tokenizer,
        unet=c.unet,
        controlnet=c.controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt="a cat",
        negative_prompt="ugly",
        image=Image.fromarray(frame),
        control_image=Image.fromarray(_canny(frame)),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=7.5,
        controlnet_conditioning_scale=0.7,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


def _as_np(image: torch.Tensor) -> np.ndarray:
    return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def test_every_constraint_off_equals_diffusers_controlnet_img2img(networks, tokenizer):
    frame, seed = _frame(1), 5
    expected = _diffusers_img2img(tokenizer, frame, steps=8, strength=0.75, seed=seed)
    settings = SamplerSettings(
        steps=8, strength=0.75, cross_frame="off", shape_fusion=OFF, pixel_fusion=OFF, adain=OFF
    )
    state = AnchorState()
    anchor = render_anchor(networks, settings, _cond(networks, frame), state, seed)
    assert anchor.evaluations == 2 * 6  # round(8 · 0.75) = 6 steps, CFG batch of 2
    np.testing.assert_allclose(_as_np(anchor.image), expected, atol=2e-4)
    # A later keyframe with every constraint off is the same plain img2img (one pass, no fusion).
    zero_flow = torch.zeros(1, 2, SIZE, SIZE)
    no_occlusion = torch.zeros(1, 1, SIZE, SIZE)
    guide = FlowGuide(zero_flow, no_occlusion, zero_flow, no_occlusion, anchor.image, anchor.image)
    later = render_keyframe(networks, settings, _cond(networks, frame), state, guide, seed)
    assert later.passes == 1
    np.testing.assert_allclose(_as_np(later.image), expected, atol=2e-4)


def test_cross_frame_attention_with_own_states_equals_self_attention(networks):
    from diffusers import UNet2DConditionModel

    unet = networks.unet
    torch.manual_seed(0)
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    timestep = torch.tensor([500, 500])
    plain = ReferenceStates.disabled(unet.layers, 2, 8, 8, "cpu", torch.float32)
    noise_plain, own = unet(sample, timestep, text, None, plain)
    assert [s.shape for s in own] == [(2, layer.tokens(8, 8), layer.channels) for layer in unet.layers]
    # The stock diffusers UNet (its own attention processors) with the same weights agrees.
    reference_unet = UNet2DConditionModel(**tiny_models.UNET_CONFIG).eval()
    reference_unet.load_state_dict(unet.module.unet.state_dict())
    with torch.no_grad():
        stock = reference_unet(sample, timestep, encoder_hidden_states=text).sample
    torch.testing.assert_close(noise_plain, stock, atol=1e-5, rtol=1e-5)
    # Cross-frame attention whose [anchor; previous] are the frame's own inputs is self-attention.
    own_refs = ReferenceStates(
        tuple(torch.cat([s, s], dim=1) for s in own), cross_frame_mask(unet.layers, "full")
    )
    noise_cross, _ = unet(sample, timestep, text, None, own_refs)
    torch.testing.assert_close(noise_cross, noise_plain, atol=1e-5, rtol=1e-5)
    # ... and other states change the result (the layers really read them).
    other = ReferenceStates(tuple(torch.randn_like(s) for s in own_refs.states), own_refs.mask)
    assert (unet(sample, timestep, text, None, other)[0] - noise_plain).abs().max() > 1e-3
    # The eager backend lets mask-0 layers attend over their own N tokens; the traced graph (what ONNX
    # export sees: keys [own; own] mixed by the mask) gives the same noise, all layers off or some.
    no_control = sample.new_zeros(0)
    for refs in (plain, ReferenceStates(other.states, cross_frame_mask(unet.layers, "loose"))):
        eager, eager_own = unet(sample, timestep, text, None, refs)
        graph, *graph_own = unet.module(sample, timestep, text, no_control, *refs.states, refs.mask)
        torch.testing.assert_close(eager, graph, atol=1e-5, rtol=1e-5)
        for a, b in zip(eager_own, graph_own, strict=True):
            torch.testing.assert_close(a, b)
    assert unet.module.exchange.plain == ()  # nothing left behind for the next (possibly traced) call


def test_loose_mode_skips_the_widest_layers(networks):
    layers = networks.unet.layers
    assert len(layers) == 9
    loose = cross_frame_mask(layers, "loose").tolist()
    assert loose == [0.0] * 3 + [1.0] * 6  # the three widest (1280-channel in SD1.5) layers come first
    assert cross_frame_mask(layers, "off").tolist() == [0.0] * 9


def test_freeu_goes_through_the_extension_point(networks, tokenizer):
    c = tiny_models.build_components()
    bundle = ModelBundle(tokenizer, c.text_encoder, c.unet, c.vae, ScheduleConfig(), (), "tiny")
    freeu = torch_networks(bundle, "cpu", torch.float32, freeu=(1.1, 1.2, 1.0, 0.2))
    assert "forward" not in vars(c.unet)  # configured, not patched
    torch.manual_seed(0)
    sample, text, timestep = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.tensor([300, 300])
    plain = ReferenceStates.disabled(networks.unet.layers, 2, 8, 8, "cpu", torch.float32)
    with_freeu, _ = freeu.unet(sample, timestep, text, None, plain)
    without, _ = networks.unet(sample, timestep, text, None, plain)
    assert (with_freeu - without).abs().max() > 1e-4


def test_window_arithmetic_for_20_steps_matches_the_reference_table():
    schedule = ddim_schedule(ScheduleConfig(), 20)
    assert schedule.timesteps == tuple(951 - 50 * i for i in range(20))
    table = [0.0082, 0.0140, 0.0231, 0.0365, 0.0557, 0.0819, 0.1163, 0.1598, 0.2128, 0.2750]
    table += [0.3456, 0.4229, 0.5048, 0.5888, 0.6722, 0.7521, 0.8264, 0.8930, 0.9505, 0.9983]
    np.testing.assert_allclose(schedule.alpha_bar, table, atol=6e-5)
    assert schedule.alpha_bar_prev[-1] == pytest.approx(0.9991, abs=2e-4)  # ᾱ_0, not 1 (method §1)
    assert window_steps(20, 0.0, 1.0) == tuple(range(20))  # cross-frame attention
    assert window_steps(20, 0.0, 0.1) == (0, 1, 2)  # shape-aware fusion
    assert window_steps(20, 0.5, 0.8, strict=True) == (11, 12, 13, 14, 15)  # pixel-aware, strict
    assert window_steps(20, 0.8, 1.0) == (16, 17, 18, 19)  # AdaIN
    assert window_steps(20, 1.0, 1.0) == ()  # the config default (1, 1): off
    assert schedule.entry(0.75) == 5 and schedule.entry(0.95) == 1 and schedule.entry(1.0) == 0


def test_shape_fusion_with_identity_flow_gives_the_anchor_x0(networks):
    settings = SamplerSettings(steps=10, strength=1.0, cross_frame="off", adain=OFF, pixel_fusion=OFF)
    state = AnchorState()
    render_anchor(networks, settings, _cond(networks, _frame(2)), state, seed=1)
    assert sorted(state.anchor_x0) == [0, 1]  # window (0, 0.1) of 10 steps
    zero_flow = torch.zeros(1, 2, SIZE, SIZE)
    mask = fusion.shape_fusion_mask(torch.zeros(1, 1, SIZE, SIZE))
    assert torch.equal(mask, torch.ones(1, 1, 8, 8))
    shape = ShapeGuide(fusion.latent_flow(zero_flow), mask)
    schedule = ddim_schedule(networks.schedule, 10)
    cond = _cond(networks, _frame(3))

    def x0_after(stop: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(9)
        begin = start_pass(networks, schedule, settings, cond, generator)
        return run_steps(
            networks, schedule, settings, cond, state, generator, "first", begin, stop, shape=shape
        ).x0

    for stop in (1, 2):
        torch.testing.assert_close(x0_after(stop), state.anchor_x0[stop - 1])
    # Outside the window the frame's own x̂0 is kept.
    assert not torch.allclose(x0_after(3), state.anchor_x0[1])


def test_fidelity_encoding_matches_a_hand_computation(networks):
    vae, sf = networks.vae_encoder.vae, networks.scaling_factor
    image = _tensor(_frame(4)) / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(image).latent_dist.mean * sf
        z_rec = vae.encode(vae.decode(z / sf).sample).latent_dist.mean * sf
        corrected = vae.decode((z + (z - z_rec)) / sf).sample
    threshold = float(np.quantile((corrected - image).abs().mean(dim=1).numpy(), 0.9))  # some pixels over
    error = (corrected - image).abs().mean(dim=1)[0] > threshold
    # Mε: bilinear ↓8 of the error map, > 0, 3×3 dilation; x_trg = z + (1 − Mε)(z − z_rec).
    small = torch.zeros(8, 8, dtype=torch.bool)
    for y in range(8):
        for x in range(8):
            # align_corners=False bilinear ↓8 samples between pixels (8y+3, 8y+4) × (8x+3, 8x+4).
            small[y, x] = bool(error[8 * y + 3 : 8 * y + 5, 8 * x + 3 : 8 * x + 5].any())
    dilated = torch.zeros(8, 8)
    for y in range(8):
        for x in range(8):
            dilated[y, x] = float(small[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].any())
    expected = z + (1 - dilated) * (z - z_rec)
    assert 0 < dilated.sum() < 64
    torch.testing.assert_close(fidelity_encode(networks, image, threshold), expected, atol=1e-5, rtol=1e-5)


def test_adain_gives_the_anchor_statistics():
    torch.manual_seed(0)
    anchor = torch.randn(1, 4, 32, 32) * torch.tensor([0.5, 1.0, 2.0, 0.8]).view(1, 4, 1, 1) + 0.3
    frame = torch.randn(1, 4, 32, 32) * 3 - 1
    mean, std = fusion.channel_stats(anchor)
    torch.testing.assert_close(mean.flatten(), anchor.mean(dim=(2, 3)).flatten())
    torch.testing.assert_close(std.flatten(), (anchor.var(dim=(2, 3), unbiased=True) + 1e-5).sqrt().flatten())
    out = fusion.adain(frame, mean, std)
    torch.testing.assert_close(out.mean(dim=(2, 3)), anchor.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), std.view(1, 4), atol=1e-4, rtol=1e-4)


def test_pixel_aware_update_matches_the_reference_formula():
    # method §2.3 worked example: w = 0.5, inner 0.9 -> r = max(0.5, √0.75 · 0.9) = 0.7794 inside, r = 1 − w = 0.5 at
    # a mask boundary (R = 0); where w = 0 nothing changes.
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    direction = torch.tensor([[[[0.4, -0.2, 0.5]]]])
    x_ref = torch.tensor([[[[-1.0, 0.5, 7.0]]]])
    weight = torch.tensor([[[[0.5, 0.5, 0.0]]]])
    rescale = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    out = fusion.pixel_fusion_step(x, direction, x_ref, weight, 0.9, rescale)
    r_inside = math.sqrt(0.75) * 0.9
    expected = [
        0.5 * -1.0 + 0.5 * (1.0 - 0.4) + r_inside * 0.4,
        0.5 * 0.5 + 0.5 * (2.0 + 0.2) + 0.5 * -0.2,
        3.0,
    ]
    torch.testing.assert_close(out.flatten(), torch.tensor(expected))
    # inner_strength 1 keeps the noise variance: w² + r² = 1 in the interior (out = r·dir − w·dir here).
    r = fusion.pixel_fusion_step(
        torch.zeros(1), torch.ones(1), torch.zeros(1), torch.tensor([0.5]), 1.0, None
    )
    assert float(r) == pytest.approx(math.sqrt(0.75) - 0.5)


def test_masks_follow_the_reference_shapes():
    occ = torch.zeros(1, 1, SIZE, SIZE)
    occ[..., 20:28, 30:40] = 1
    soft = fusion.soft_mask(occ)
    assert soft[..., 20:28, 30:40].min() == 1 and soft[..., 0, 0] == 0 and 0 < soft[..., 17, 35] < 1
    mask = fusion.shape_fusion_mask(occ)
    assert mask.shape == (1, 1, 8, 8) and mask[..., 3, 4] == 0 and mask[..., 0, 0] == 1
    mp = fusion.pixel_fusion_mask(occ, torch.zeros_like(occ))  # the anchor sees everything: nothing missed
    assert torch.equal(mp, torch.ones_like(mp))
    mp = fusion.pixel_fusion_mask(occ, occ)
    assert mp[..., 3, 4] == 0 and mp[..., 0, 0] == 1
    rescale = fusion.noise_rescale(mp)
    assert rescale[..., 0, 0] == 1 and rescale[..., 3, 4] == 0 and rescale[..., 2, 4] == 0


def _side_by_side_guide(anchor_image: torch.Tensor) -> FlowGuide:
    flow = torch.zeros(1, 2, SIZE, SIZE)
    flow[:, 0] = -3.0
    # Side by side occlusions: the composite shows the direct image between and around them.
    occ_anchor, occ_previous = torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE)
    occ_anchor[..., :, :10] = 1
    occ_previous[..., :, 12:22] = 1
    return FlowGuide(flow, occ_anchor, flow, occ_previous, anchor_image, anchor_image)


def test_keyframe_cost_and_state_updates(networks):
    settings = SamplerSettings(steps=20, strength=0.75)  # docs/decisions.md 7 defaults
    state = AnchorState()
    anchor_frame, frame = _frame(6), _frame(6, shift=3)
    anchor = render_anchor(networks, settings, _cond(networks, anchor_frame), state, seed=0)
    assert anchor.evaluations == 30  # round(20 · 0.75) = 15 steps × CFG 2
    assert sorted(state.first) == list(range(5, 20)) and len(state.first[5]) == 6  # loose: 6 layers
    assert sorted(state.adain) == [16, 17, 18, 19] and state.anchor_x0 == {}  # shape window before entry
    guide = _side_by_side_guide(anchor.image)
    result = render_keyframe(networks, settings, _cond(networks, frame), state, guide, seed=0)
    # Entry step 5, first pixel-fusion step 11: the shared steps 5–10 (12 evaluations) run once, then pass 1
    # finishes steps 11–19 (18) and pass 2 runs steps 11–19 with pixel fusion (18): 48, not 2 × 30.
    assert (result.evaluations, result.passes) == (48, 2)
    assert all(state.previous[i][0] is not state.first[i][0] for i in range(5, 20))
    assert not torch.equal(state.previous[10][0], state.first[10][0])
    # The cheaper option: the x̂0 of the last shared step is the direct image; pass 1 is not finished.
    cheap = replace(settings, direct_image="branch-x0")
    assert render_keyframe(networks, cheap, _cond(networks, frame), state, guide, seed=0).evaluations == 30
    # When one warp sees every pixel, the composite never shows the direct image: no pass 1 at all.
    none = torch.zeros_like(guide.occluded_anchor)
    for occ_a, occ_p in ((guide.occluded_anchor, none), (none, none), (none, guide.occluded_previous)):
        blind = FlowGuide(
            guide.flow_to_anchor, occ_a, guide.flow_to_previous, occ_p, anchor.image, anchor.image
        )
        for mode in (settings, cheap):
            result = render_keyframe(networks, mode, _cond(networks, frame), state, blind, seed=0)
            assert (result.evaluations, result.passes, result.direct) == (30, 1, None)


def test_branched_pass_one_equals_an_independent_full_pass_one_bit_for_bit(networks):
    settings = SamplerSettings(steps=20, strength=0.75)
    state = AnchorState()
    anchor = render_anchor(networks, settings, _cond(networks, _frame(6)), state, seed=0)
    guide = _side_by_side_guide(anchor.image)
    cond = _cond(networks, _frame(6, shift=3))
    schedule = ddim_schedule(networks.schedule, settings.steps)
    shape = ShapeGuide(
        fusion.latent_flow(guide.flow_to_anchor), fusion.shape_fusion_mask(guide.occluded_anchor)
    )
    # The authors' pass 1: a whole pass on its own, same seed, before pass 2 touches the stored states.
    x, _, evaluations = run_pass(
        networks, schedule, settings, cond, state, torch.Generator().manual_seed(7), "first", shape=shape
    )
    assert evaluations == 30
    independent = decode(networks, x)
    second_keyframe_state = AnchorState(
        dict(state.first), dict(state.previous), dict(state.anchor_x0), dict(state.adain)
    )
    result = render_keyframe(networks, settings, cond, state, guide, seed=7)
    assert result.direct is not None and torch.equal(result.direct, independent)
    # Pass 2 equals a whole pass 2 run after the independent pass 1 (the authors' order), bit for bit too.
    from rerender.filter.sampler.keyframe import pixel_guide

    pixel = pixel_guide(networks, settings, guide, independent)
    x2, _, _ = run_pass(
        networks, schedule, settings, cond, second_keyframe_state, torch.Generator().manual_seed(7), "second",
        shape=shape, pixel=pixel, update_previous=True,
    )  # fmt: skip
    assert torch.equal(result.image, decode(networks, x2))
    assert all(
        torch.equal(a, b)
        for i in state.previous
        for a, b in zip(state.previous[i], second_keyframe_state.previous[i], strict=True)
    )
    # The branch-point x̂0 is a different (cheaper) direct image.
    cheap = render_keyframe(
        networks,
        replace(settings, direct_image="branch-x0"),
        cond,
        AnchorState(dict(state.first), dict(state.first), dict(state.anchor_x0), dict(state.adain)),
        guide,
        seed=7,
    )
    assert not torch.equal(cheap.direct, independent)


def test_direct_image_option_is_checked():
    with pytest.raises(ValueError, match="direct_image must be one of pass1, branch-x0"):
        SamplerSettings(direct_image="early")


def test_color_correction_moves_colours_and_keeps_luminosity():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur((rng.random((48, 48, 3)) * 255).astype(np.uint8), (7, 7), 2)
    target = frame.copy()
    target[..., 0] = np.clip(target[..., 0] * 0.3 + 150, 0, 255)  # a reddish style
    out = color_correct(frame, target)
    lum = np.array([0.3, 0.59, 0.11])
    assert np.abs(out.astype(float) @ lum - frame.astype(float) @ lum).mean() < 2.0
    lab = [cv2.cvtColor(im, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0) for im in (frame, target, out)]
    assert abs(lab[2][1] - lab[1][1]) < abs(lab[0][1] - lab[1][1])  # the a* channel moved toward the target


class StepLog(Constraint):
    """A user-written constraint: logs each hook call with its step; `scale` multiplies x̂0 (1 keeps it)."""

    def __init__(self, window: Window, scale: float = 1.0):
        self.window, self.scale = window, scale
        self.calls: list[tuple[str, int]] = []
        self.masks: list[list[float]] = []

    def before_unet(self, step, inputs):
        self.calls.append(("before_unet", step.index))
        self.masks.append(inputs.reference.mask.tolist())
        return inputs

    def after_unet(self, step, own_states):
        assert len(own_states) == 9
        self.calls.append(("after_unet", step.index))

    def on_x0(self, step, x0):
        self.calls.append(("on_x0", step.index))
        return x0 * self.scale


HOOKS = ("before_unet", "after_unet", "on_x0")


def test_a_user_constraint_has_its_hooks_called_exactly_within_its_window(networks):
    settings = SamplerSettings(steps=10, strength=0.75)  # entry step 10 − round(7.5) = 2
    schedule = ddim_schedule(networks.schedule, 10)
    cond, state = _cond(networks, _frame(8)), AnchorState()

    def anchor_pass(extra=()):
        generator = torch.Generator().manual_seed(3)
        return run_pass(networks, schedule, settings, cond, state, generator, "anchor", extra=extra)

    plain_x, _, plain_evaluations = anchor_pass()
    inclusive, strict = StepLog(Window(0.3, 0.6)), StepLog(Window(0.3, 0.6, strict=True))
    early = StepLog(Window(0.0, 0.1))  # steps 0–1: before the SDEdit entry step, never reached
    x, _, evaluations = anchor_pass([inclusive, strict, early])
    assert inclusive.calls == [(hook, i) for i in (3, 4, 5, 6) for hook in HOOKS]
    assert strict.calls == [(hook, i) for i in (4, 5) for hook in HOOKS]
    assert early.calls == []
    # Hooks that return what they were given change nothing; the anchor's UNet calls are plain attention.
    assert evaluations == plain_evaluations == 16 and torch.equal(x, plain_x)
    assert inclusive.masks == [[0.0] * 9] * 4
    # What on_x0 returns is the x̂0 the step continues from.
    last = StepLog(Window(0.9, 1.0), scale=0.0)
    _, x0, _ = anchor_pass([last])
    assert last.calls == [(hook, 9) for hook in HOOKS] and torch.equal(x0, torch.zeros_like(x0))
    # In a later keyframe's pass a user constraint runs after the method's: it sees the cross-frame
    # references (loose mode: the six narrower layers) that CrossFrameAttention set for the UNet call.
    after = StepLog(Window(0.0, 1.0))
    generator = torch.Generator().manual_seed(4)
    begin = start_pass(networks, schedule, settings, cond, generator)
    end = run_steps(networks, schedule, settings, cond, state, generator, "first", begin, 5, extra=[after])
    assert after.calls == [(hook, i) for i in (2, 3, 4) for hook in HOOKS] and end.step == 5
    assert after.masks == [[0.0] * 3 + [1.0] * 6] * 3


def test_flat_unet_inputs_without_residuals_or_marker_are_refused(networks):
    unet = networks.unet
    sample, text, timestep = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32), torch.tensor([500, 500])
    refs = ReferenceStates.disabled(unet.layers, 2, 8, 8, "cpu", torch.float32)
    with pytest.raises(ValueError, match="ControlNet residuals .* or one empty tensor"):
        unet.module(sample, timestep, text, *refs.states, refs.mask)
