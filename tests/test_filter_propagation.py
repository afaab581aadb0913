"""Propagation (guides, chains, init_nnf, blend) and the `frames` renderer, through the real Filter."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from media import texture
from rerender.engines.flow import DISFlow, FlowPair, estimate_pair
from rerender.filter.errors import UsageError
from rerender.filter.frames import Frame
from rerender.filter.graph import Filter, FilterOptions
from rerender.filter.propagation import (
    KeySide,
    PropagationChain,
    PropagationOptions,
    Timings,
    blend_weights,
    carry_nnf,
    edge_guide,
    inpaint_occluded,
    positional_ramp,
    propagate_gap,
    unchanged_pixels,
)
from rerender.filter.renderers.frames import FramesRenderer, scan_keyframe_files
from rerender.filter.schedule import FixedSchedule, ScheduleOptions
from rerender.native.params import SynthParams
from rerender.native.synthesize import make_synthesizer

TB = Fraction(1, 25)


def posterize(image: np.ndarray) -> np.ndarray:
    return (255 - image) // 32 * 32 + 16


class Posterize:
    name = "posterize"

    def render(self, frame, context):
        return posterize(frame)


def drain(filt: Filter, frames: list[Frame]) -> list[Frame]:
    for frame in frames:
        filt.push(frame)
    filt.push(None)
    out = []
    while True:
        try:
            out.append(filt.pull())
        except EOFError:
            return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def test_pure_translation_reproduces_the_shifted_keyframe():
    """Frames that are one image moving 3 px per frame: each propagated frame must equal the stylized
    keyframe moved by the same amount (the per-pixel style commutes with the shift)."""
    step, k, width, height = 3, 6, 128, 64
    big = texture(3, 240, height)
    frames = [
        Frame(j, j, TB, np.ascontiguousarray(big[:, 60 - j * step : 60 - j * step + width]))
        for j in range(k + 1)
    ]
    opts = FilterOptions(
        schedule=ScheduleOptions(interval=k, scene_cuts=False),
        size=64,  # 128x64 is already a processing canvas: no resampling blurs the comparison
        propagation=PropagationOptions(SynthParams(search_vote_iters=4, patchmatch_iters=3)),
    )
    out = drain(Filter(Posterize(), opts), frames)
    keyframe = out[0].image
    for j in range(1, k):
        expected = np.roll(keyframe, j * step, axis=1)
        inner = (slice(8, -8), slice(8 + j * step, -8))  # skip the columns that entered the frame
        assert psnr(out[j].image[inner], expected[inner]) > 35, j


def _pair(dx: float, occluded: float = 0.0, size: tuple[int, int] = (32, 48)) -> FlowPair:
    """A consecutive-frame pair moving dx pixels, with the given occluded fraction (leading columns)."""
    h, w = size
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = dx
    occ = np.zeros((h, w), bool)
    occ[:, : round(occluded * w)] = True
    return FlowPair(-flow, flow, occ, occ.copy())


def test_blend_weights_by_frames_are_the_authors_formula():
    # The authors' blend: keyframe interval K, counter i = 0 … K − 2 for frame k_a + 1 + i, w_a = i / (K − 1).
    for interval in (2, 3, 4, 10):
        pairs = [_pair(2.0)] * interval  # K frame steps, K − 1 frames between the keys
        expected = [i / (interval - 1) for i in range(interval - 1)]
        assert blend_weights(pairs, "frames") == expected
    assert blend_weights([_pair(2.0)] * 4, "frames")[0] == 0.0  # the first frame is forced to the left key
    assert blend_weights([_pair(2.0)], "frames") == []  # adjacent keyframes: nothing to blend


def test_blend_weights_by_motion():
    even = [_pair(2.0)] * 4  # n = 3 frames between the keys: equal costs give the symmetric positions
    assert blend_weights(even, "motion") == pytest.approx([0.25, 0.5, 0.75])
    # Held still for 3 frames, then moving (and revealing): the still frames stay with the left keyframe.
    gap = [_pair(0.0)] * 3 + [_pair(3.0, 0.1)] * 4  # n = 6 frames between the keys
    motion = blend_weights(gap, "motion")
    assert all(w < 0.03 for w in motion[:3])
    assert motion == sorted(motion) and 0.0 < motion[0] and motion[-1] < 1.0
    assert motion[3:] == pytest.approx([0.25, 0.5, 0.75], abs=0.02)
    # A gap with no motion at all falls back to the frame positions.
    assert blend_weights([_pair(0.0)] * 4, "motion") == pytest.approx([0.25, 0.5, 0.75])


def test_motion_weights_keep_a_held_picture_on_its_keyframe():
    """A picture held still for 8 frames, then moving: one gap between keyframes 0 and 15. By frame
    position the held frames take up to half of the far keyframe's propagation; by motion they are the
    left keyframe's (the per-pixel style of the held picture), and the moving frames are no worse."""
    held = texture(0, 96, 64)
    images = [held] * 9 + [texture(2 * i, 96, 64) for i in range(1, 8)]
    frames = [Frame(i, i, TB, image) for i, image in enumerate(images)]
    results = {}
    for mode in ("frames", "motion"):
        opts = FilterOptions(
            schedule=ScheduleOptions(interval=15, scene_cuts=False),
            size=64,
            propagation=PropagationOptions(
                SynthParams(search_vote_iters=2, patchmatch_iters=2, threads=1), blend_weights=mode
            ),
        )
        out = drain(Filter(Posterize(), opts), frames)
        assert [f.index for f in out] == list(range(16))
        results[mode] = [psnr(f.image, posterize(image)) for f, image in zip(out, images, strict=True)]
    held_frames, moving_frames = slice(1, 9), slice(9, 15)
    by_frames, by_motion = results["frames"], results["motion"]
    assert np.mean(by_motion[held_frames]) > np.mean(by_frames[held_frames]) + 3.0
    assert np.mean(by_motion[moving_frames]) > np.mean(by_frames[moving_frames]) - 0.5


def test_guides_follow_the_paper():
    image = texture(1, 20, 10)
    edge = edge_guide(image)
    manual = np.clip(
        4 * image[1:-1, 1:-1].astype(int)
        - image[:-2, 1:-1]
        - image[2:, 1:-1]
        - image[1:-1, :-2]
        - image[1:-1, 2:],
        0,
        255,
    )
    assert np.array_equal(edge[1:-1, 1:-1], manual)
    ramp = positional_ramp(5, 9)
    assert ramp[0, 0].tolist() == [0, 0, 0] and ramp[-1, -1].tolist() == [255, 255, 0]
    assert ramp[2, 0, 0] == 128 and ramp[0, 4, 1] == 128


def test_inpainting_fills_only_occluded_pixels():
    # A smooth image (a colour ramp): a fill that follows the hole's surroundings lands close to it.
    image = cv2.resize(positional_ramp(4, 4), (300, 260), interpolation=cv2.INTER_LINEAR)
    holes = np.zeros(image.shape[:2], bool)
    holes[100:140, 50:90] = True
    damaged = image.copy()
    damaged[holes] = 0
    for radius in (5, 30):
        filled = inpaint_occluded(damaged, holes, radius)
        assert np.array_equal(filled[~holes], image[~holes])
        assert np.abs(filled[holes].astype(int) - image[holes]).mean() < 12  # black would be ~90 off


def test_carried_nnf_moves_with_the_flow_and_stays_in_the_style():
    nnf = np.stack(np.meshgrid(np.arange(8), np.arange(6)), axis=2).astype(np.int32)
    flow = np.zeros((6, 8, 2), np.float32)
    flow[..., 0] = -2  # content moved right by 2: pixel x now matches what x - 2 matched
    moved = carry_nnf(nnf, flow, (6, 8))
    assert moved.dtype == np.int32
    assert moved[3, 5].tolist() == [3, 3]
    assert moved[..., 0].min() >= 0


def moving_gap(n: int, width: int = 160, height: int = 128):
    """Keyframes at 0 and n + 1 of the drifting test texture, n frames between them, DIS flow pairs."""
    frames = [texture(i, width, height) for i in range(n + 2)]
    dis = DISFlow()
    pairs = [estimate_pair(dis, frames[i], frames[i + 1]) for i in range(n + 1)]
    left = KeySide(frames[0], posterize(frames[0]))
    right = KeySide(frames[-1], posterize(frames[-1]))
    return left, right, frames[1:-1], pairs


def test_a_gap_is_the_same_for_every_thread_count():
    """A scale-out worker must reproduce a local run frame for frame: the whole gap (both chains, guides,
    carried NNF, blend) is identical for 1, 2 and 4 synthesis threads, chains in parallel or not. The
    frames are large enough (> 16384 pixels) that the finest level really runs on several threads."""
    left, right, targets, pairs = moving_gap(3)
    quick = SynthParams(search_vote_iters=3, patchmatch_iters=2)
    runs = []
    for threads, parallel in ((1, False), (2, True), (4, True), (None, True)):
        opts = PropagationOptions(replace(quick, threads=threads), parallel_chains=parallel, inpaint_radius=5)
        runs.append(propagate_gap(left, right, targets, pairs, opts, Timings()))
    for run in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], run, strict=True))


def chain_cost(frames: list[np.ndarray], pairs: list[FlowPair], skip: int | None) -> tuple[int, list]:
    """Patch distances computed by a forward chain over frames[1:] from frames[0] (posterized)."""
    options = PropagationOptions(SynthParams(search_vote_iters=4, patchmatch_iters=3), skip_unchanged=skip)
    chain = PropagationChain(
        KeySide(frames[0], posterize(frames[0])), options, Timings(), make_synthesizer("cpu")
    )
    results = [
        chain.step(frame, edge_guide(frame), pair.later_to_earlier, pair.occluded_later)
        for frame, pair in zip(frames[1:], pairs, strict=True)
    ]
    return sum(r.patch_evaluations for r in results), results


def test_a_still_sequence_costs_a_small_fraction_of_a_moving_one():
    """docs/synthesis.md §11: where the guides did not change, the carried match is kept without search,
    so the work (counted in patch distances, not time) follows the changed area."""
    w, h = 160, 128
    still = [texture(0, w, h)] * 4
    zero = np.zeros((h, w, 2), np.float32)
    none = np.zeros((h, w), bool)
    still_pairs = [FlowPair(zero, zero, none, none)] * 3
    moving = [texture(i, w, h) for i in range(4)]
    dis = DISFlow()
    moving_pairs = [estimate_pair(dis, moving[i], moving[i + 1]) for i in range(3)]

    still_cost, still_results = chain_cost(still, still_pairs, skip=2)
    moving_cost, _ = chain_cost(moving, moving_pairs, skip=2)
    searched_still_cost, _ = chain_cost(still, still_pairs, skip=None)
    # Searching every pixel, a still frame costs about a tenth of a moving one here (its matches are
    # already right, so the convergence masks stop early); keeping them halves that again and more.
    assert still_cost < 0.08 * moving_cost
    assert still_cost < 0.6 * searched_still_cost
    assert still_results[0].patch_evaluations < 0.02 * moving_cost / 3  # first step: all kept
    key = posterize(still[0])
    for r in still_results:  # nothing moved: the keyframe's stylization, unchanged
        assert np.array_equal(r.image[4:-4, 4:-4], key[4:-4, 4:-4])


@pytest.mark.parametrize("skip", [-1, 256, 2.5, True, "4"])
def test_skip_unchanged_is_a_level_count(skip):
    with pytest.raises(ValueError, match="skip_unchanged must be None or an integer from 0 to 255"):
        PropagationOptions(skip_unchanged=skip)


def test_unchanged_pixels_follow_the_flow_and_skip_occlusions_and_patch_borders():
    h, w = 40, 50
    image = texture(1, w + 10, h)
    before, now = image[:, :w], image[:, 3 : 3 + w]  # content moved left by 3
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = 3  # a pixel of `now` was at x + 3 in `before`
    occluded = np.zeros((h, w), bool)
    occluded[10, 20] = True
    kept = unchanged_pixels([before], [now], flow, occluded, tolerance=0, patch_size=5)
    assert not kept[8:13, 18:23].any()  # every patch that holds the occluded pixel
    assert kept[20:30, 5:40].all()
    assert not kept[:, -4:].any()  # flow points outside the frame there: the clamped samples differ
    edited = now.copy()
    edited[30, 30] += 5
    kept = unchanged_pixels([before], [edited], flow, occluded, tolerance=4, patch_size=3)
    assert not kept[29:32, 29:32].any() and kept[25, 25]


# -- the frames renderer -------------------------------------------------------------------------------


def write_keys(folder: Path, indices, width=40, height=32, fmt="{:04d}.png") -> dict[int, np.ndarray]:
    folder.mkdir(exist_ok=True)
    keys = {}
    for i in indices:
        image = posterize(texture(i, width, height))
        cv2.imwrite(str(folder / fmt.format(i)), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        keys[i] = image
    return keys


def clip(n: int) -> list[Frame]:
    return [Frame(i, i * 2, TB, texture(i, 40, 32)) for i in range(n)]


FAST = PropagationOptions(
    SynthParams(search_vote_iters=2, patchmatch_iters=2, pyramid_levels=2, threads=1), inpaint_radius=5
)


def frames_filter(
    folder: Path, warnings: list[str] | None = None, first_index: int = 0, on_keyframe=None
) -> Filter:
    renderer = FramesRenderer(folder, first_index=first_index, size=64)
    opts = FilterOptions(schedule=ScheduleOptions(interval=3), size=64, propagation=FAST)
    on_warning = warnings.append if warnings is not None else None
    # The schedule follows the files (as `rerender run` builds it), not the options' K.
    schedule = FixedSchedule(frozenset(scan_keyframe_files(folder, first_index)))
    return Filter(renderer, opts, on_warning=on_warning, on_keyframe=on_keyframe, schedule=schedule)


def test_frames_renderer_schedule_follows_the_files(tmp_path):
    keys = write_keys(tmp_path / "keys", [0, 4, 7])
    seen: list[int] = []
    out = drain(frames_filter(tmp_path / "keys", on_keyframe=lambda i, s, t: seen.append(i)), clip(10))
    assert seen == [0, 4, 7]  # not every 3rd frame: the files decide; 9 has no file (forward only)
    assert [f.index for f in out] == list(range(10))
    for i, image in keys.items():
        assert np.abs(out[i].image.astype(int) - image).mean() < 12
    # Frames after the last file still come out, propagated from frame 7's keyframe.
    assert np.abs(out[9].image.astype(int) - posterize(texture(9, 40, 32))).mean() < 40


def test_frames_renderer_without_a_file_for_frame_0_propagates_backward(tmp_path):
    write_keys(tmp_path / "keys", [3, 6], fmt="key_{:03d}.png")
    out = drain(frames_filter(tmp_path / "keys"), clip(8))
    assert [f.index for f in out] == list(range(8))
    assert np.abs(out[0].image.astype(int) - posterize(texture(0, 40, 32))).mean() < 40


def test_frames_renderer_warns_about_files_past_the_end(tmp_path):
    write_keys(tmp_path / "keys", [0, 5, 30, 31])
    warnings: list[str] = []
    out = drain(frames_filter(tmp_path / "keys", warnings), clip(8))
    assert len(out) == 8
    assert len(warnings) == 1 and "2 keyframe file(s)" in warnings[0] and "frame 30" in warnings[0]


def test_frames_renderer_with_no_file_inside_the_video_is_an_error(tmp_path):
    write_keys(tmp_path / "keys", [50])
    filt = frames_filter(tmp_path / "keys")
    for frame in clip(5):
        filt.push(frame)
    with pytest.raises(UsageError, match="none of the keyframe files"):
        filt.push(None)


def test_frames_renderer_first_index_for_ffmpeg_numbering(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    for i in (0, 4):
        image = posterize(texture(i, 40, 32))
        cv2.imwrite(str(folder / f"{i + 1:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert sorted(scan_keyframe_files(folder, first_index=1)) == [0, 4]
    out = drain(frames_filter(folder, first_index=1), clip(5))
    assert np.abs(out[4].image.astype(int) - posterize(texture(4, 40, 32))).mean() < 12


def test_frames_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        FramesRenderer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UsageError, match="no image whose name carries a frame index"):
        FramesRenderer(tmp_path / "empty")
    write_keys(tmp_path / "dup", [2])
    write_keys(tmp_path / "dup", [2], fmt="{:d}.png")
    with pytest.raises(UsageError, match="two keyframe files name frame 2"):
        FramesRenderer(tmp_path / "dup")


def test_frames_renderer_rejects_a_keyframe_of_another_shape(tmp_path):
    write_keys(tmp_path / "keys", [0], width=40, height=40)
    filt = frames_filter(tmp_path / "keys")
    with pytest.raises(UsageError, match="aspect ratio"):
        filt.push(clip(1)[0])


def test_poisson_fusion_is_off_by_default_and_poisson_turns_it_on():
    from rerender.filter.job import parse_run_options

    assert not PropagationOptions().poisson
    base = ["-i", "in.mp4", "-o", "out.mp4"]
    assert not parse_run_options(base).filter.propagation.poisson
    assert parse_run_options([*base, "--poisson"]).filter.propagation.poisson
    assert not parse_run_options([*base, "--no-poisson"]).filter.propagation.poisson
