"""Keyframe schedules (uniform, adaptive, fixed) through their protocol, scene-cut detection, and the
processing geometry."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media import texture
from rerender.filter.errors import UsageError
from rerender.filter.geometry import ProcessingGeometry, to_depth, to_uint8
from rerender.filter.schedule import (
    SCENE_CUT_THRESHOLD,
    AdaptivePlanner,
    AdaptiveSchedule,
    FixedSchedule,
    KeyframeSchedule,
    Motion,
    Plan,
    SceneCut,
    SceneCutDetector,
    ScheduleOptions,
    UniformSchedule,
    colour_histogram,
    cut_score,
    histogram_distance,
    make_schedule,
)

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def keyframes(schedule: KeyframeSchedule, motions: list[Motion | None]) -> list[int]:
    """The frames each `decide` makes keyframes at once (before the end of the stream)."""
    return [i for i, m in enumerate(motions) if i in schedule.decide(i, m).keyframes]


def still(i: int = 0) -> Motion:
    return Motion(0.01, 0.0, 0.05, 512)


def busy(i: int = 0) -> Motion:
    return Motion(0.05, 0.08, 8.0, 512)


def test_uniform_schedule_is_every_k_frames():
    motions = [None] + [still()] * 24
    assert keyframes(UniformSchedule(ScheduleOptions(interval=10)), motions) == [0, 10, 20]
    assert keyframes(UniformSchedule(ScheduleOptions(interval=1)), motions[:4]) == [0, 1, 2, 3]


def plan(costs: list[float], k: int) -> list[int]:
    """Absolute keyframe indices for frames 1.. with these costs (frame 0 is the anchor), as the Filter
    drives the planner: add() per frame, finish() at the end."""
    planner = AdaptivePlanner(k, ScheduleOptions().max_factor)
    keys, last = [0], 0
    for cost in costs:
        position = planner.add(cost)
        if position is not None:
            last += position + 1
            keys.append(last)
    for position in planner.finish():
        keys.append(last + 1 + position)
    return keys


def test_adaptive_planner_spends_keyframes_where_the_motion_is():
    # 40 still frames, then 40 busy ones: uniform K=10 puts 4 keyframes in each half.
    keys = plan([still().cost] * 40 + [busy().cost] * 40, 10)
    in_still = [k for k in keys if 0 < k <= 40]
    in_busy = [k for k in keys if k > 40]
    assert len(in_busy) > 4 > len(in_still)
    gaps = np.diff(keys)
    assert gaps.min() >= 5 and gaps.max() <= 20  # within [K / 2, 2 K]
    assert keys[-1] == 80


def test_adaptive_planner_on_constant_motion_is_uniform():
    assert plan([busy().cost] * 40, 8) == [0, 8, 16, 24, 32, 40]


def test_adaptive_planner_splits_the_end_into_equal_cost_gaps():
    planner = AdaptivePlanner(10, 2.0)
    for cost in [0.0] * 5 + [1.0] * 10:
        assert planner.add(cost) is None  # fewer than 2K frames: no decision yet
    positions = planner.finish()
    assert positions[-1] == 14 and len(positions) == 2  # 15 frames ~ 2 gaps of K
    assert 5 < positions[0] < 14  # the split lands inside the moving part


def test_uniform_mode_never_uses_motion_for_keyframes():
    schedule = UniformSchedule(ScheduleOptions(interval=3))
    motions = [None, busy(), still(), busy(), busy()]
    assert [i in schedule.decide(i, m).keyframes for i, m in enumerate(motions)] == [
        True,
        False,
        False,
        True,
        False,
    ]


def test_scene_cut_makes_an_anchor():
    schedule = UniformSchedule(ScheduleOptions(interval=10))
    assert schedule.decide(0, None) == Plan((0,), anchor=0)
    assert schedule.decide(1, still()) == Plan()
    # The cut is an anchor, and the frame before it a keyframe closing its scene; the plan names the cut
    # and what made it one.
    cut = SceneCut(2, 0.8, 0.9)
    assert schedule.decide(2, Motion(0.8, 0.9, 30.0, 512)) == Plan((1, 2), anchor=2, cuts=(cut,))
    assert cut.score == pytest.approx(0.85)
    # The interval restarts at the cut.
    decisions = [schedule.decide(i, still()) for i in range(3, 13)]
    assert decisions[-1] == Plan((12,)) and all(d == Plan() for d in decisions[:-1])


def test_cut_detector_on_real_frames():
    detector = SceneCutDetector()
    a, b = texture(0, 96, 64), texture(1, 96, 64)
    other = np.ascontiguousarray(texture(40, 96, 64)[::-1, :, ::-1])  # another shot: colder, flipped
    other[..., 2] = np.maximum(other[..., 2], 200)
    same_shot = histogram_distance(colour_histogram(a), colour_histogram(b))
    new_shot = histogram_distance(colour_histogram(a), colour_histogram(other))
    assert same_shot < 0.2 < new_shot
    assert not detector.is_cut(Motion(same_shot, 0.02, 1.0, 64))
    assert detector.is_cut(Motion(new_shot, 0.7, 10.0, 64))


def test_cut_score_needs_both_measurements_or_one_near_its_maximum():
    detector = SceneCutDetector()
    # Fast motion inside a shot: many occluded pixels, alike colours (a held-out boxing clip measured 0.21
    # and 0.68, which the detector's earlier two-threshold rule called a cut).
    assert not detector.is_cut(Motion(0.21, 0.68, 10.6, 256))
    # A lighting change: colours jump, the flow still matches.
    assert not detector.is_cut(Motion(0.7, 0.2, 0.5, 256))
    # A new shot: the flow matches almost nothing and the colours differ, even moderately.
    assert detector.is_cut(Motion(0.15, 0.99, 20.0, 256))
    assert detector.is_cut(Motion(0.85, 0.995, 20.0, 256))
    assert cut_score(0.4, 0.6) == pytest.approx(0.5) and not SceneCutDetector(0.5).is_cut(
        Motion(0.4, 0.6, 1, 64)
    )


def test_scene_cut_threshold_tunes_the_detector_and_is_validated():
    motions = [None, still(), Motion(0.3, 0.6, 5.0, 512), still()]
    assert ScheduleOptions().detector == SceneCutDetector(SCENE_CUT_THRESHOLD)

    def cuts(options: ScheduleOptions) -> list[SceneCut]:
        schedule = make_schedule(options)
        return [c for i, m in enumerate(motions) for c in schedule.decide(i, m).cuts]

    assert cuts(ScheduleOptions()) == []  # score 0.45
    assert cuts(ScheduleOptions(scene_cut_threshold=0.4)) == [SceneCut(2, 0.3, 0.6)]
    assert cuts(ScheduleOptions(mode="adaptive", scene_cut_threshold=0.4)) == [SceneCut(2, 0.3, 0.6)]
    assert cuts(ScheduleOptions(scene_cut_threshold=0.4, scene_cuts=False)) == []
    assert cuts(ScheduleOptions(scene_cut_threshold=1)) == []  # a score never exceeds 1
    for bad in (0, -0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="--scene-cut-threshold"):
            ScheduleOptions(scene_cut_threshold=bad)


def _shared_clip_frames(name: str, count: int, short_side: int = 256) -> list[np.ndarray]:
    clips = [c for c in sorted(SHARED_MEDIA.glob("*.mp4")) if name in c.name]
    if not clips:
        pytest.skip(f"no real clips: {SHARED_MEDIA} has no {name} clip")
    frames = []
    with av.open(str(clips[0])) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            h, w = image.shape[:2]
            scale = short_side / min(h, w)
            frames.append(
                cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            )
            if len(frames) == count:
                return frames
    return frames


def _cuts_of(images: list[np.ndarray]) -> list[int]:
    """The cut frames a default schedule finds on a real stream, from real flow and histograms."""
    from rerender.engines.flow import DISFlow, estimate_pair

    schedule, dis, found = make_schedule(ScheduleOptions()), DISFlow(), []
    for i, image in enumerate(images):
        motion = None
        if i:
            pair = estimate_pair(dis, images[i - 1], image)
            distance = histogram_distance(colour_histogram(images[i - 1]), colour_histogram(image))
            motion = Motion(distance, pair.occluded_fraction, pair.mean_motion, min(image.shape[:2]))
        found += [cut.index for cut in schedule.decide(i, motion).cuts]
    return found


@pytest.mark.skipif(not SHARED_MEDIA.is_dir(), reason=f"no real clips: {SHARED_MEDIA} is absent")
def test_fast_motion_and_pans_are_not_cuts_but_a_change_of_shot_is():
    talking = _shared_clip_frames("antoni", 41)
    turning = _shared_clip_frames("cottonbro", 41)
    speed5 = talking[::5]  # the clip at 5x: the largest within-shot scores of the harder test set
    h, w = turning[0].shape[:2]
    window = w // 2
    pan = [
        np.ascontiguousarray(f[:, (w - window) * i // 8 : (w - window) * i // 8 + window])
        for i, f in enumerate(turning[:9])
    ]
    assert _cuts_of(speed5) == [] and _cuts_of(pan) == []
    # Two shots joined, both cropped to one size (the talking man is portrait, the turning woman landscape).
    th, tw = min(talking[0].shape[0], h), min(talking[0].shape[1], w)
    joined = [np.ascontiguousarray(f[:th, :tw]) for f in talking[:4] + turning[:4]]
    assert _cuts_of(joined) == [4]


def test_schedule_options_are_validated():
    with pytest.raises(ValueError, match="at least 1"):
        ScheduleOptions(interval=0)


@pytest.mark.parametrize(
    "size,fit,expected",
    [
        ((540, 960), "pad", (512, 960)),
        ((540, 960), "crop", (512, 896)),
        ((506, 960), "pad", (512, 1024)),
        ((960, 540), "pad", (960, 512)),
        ((48, 64), "pad", (64, 128)),
        ((512, 512), "pad", (512, 512)),
    ],
)
def test_processing_size_keeps_the_aspect_with_sides_multiple_of_64(size, fit, expected):
    g = ProcessingGeometry.for_input(*size, short_side=512 if min(size) > 64 else 64, fit=fit)
    assert g.canvas == expected
    assert g.canvas[0] % 64 == 0 and g.canvas[1] % 64 == 0
    # Never stretched: the scaled content has the input's aspect within rounding.
    assert g.scaled[1] / g.scaled[0] == pytest.approx(size[1] / size[0], rel=0.01)


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_geometry_round_trip_returns_the_input_size(fit):
    image = texture(2, 150, 90)
    g = ProcessingGeometry.for_input(90, 150, short_side=128, fit=fit)
    back = g.to_output(g.to_processing(image))
    assert back.shape == image.shape
    inner = (slice(10, -10), slice(20, -20))
    assert np.abs(back[inner].astype(int) - image[inner]).mean() < 12


def test_geometry_rejects_bad_sizes():
    with pytest.raises(UsageError, match="between 64 and 2048"):
        ProcessingGeometry.for_input(100, 100, short_side=65536)
    g = ProcessingGeometry.for_input(100, 100, short_side=64)
    with pytest.raises(UsageError, match="may not change"):
        g.to_processing(np.zeros((50, 50, 3), np.uint8))


def test_bit_depth_conversions():
    deep = np.array([[[0, 257, 65535]]], np.uint16)
    assert to_uint8(deep).tolist() == [[[0, 1, 255]]]
    assert to_depth(to_uint8(deep), np.uint16).tolist() == deep.tolist()


@pytest.mark.parametrize("total", [1, 2, 9, 10, 11, 25, 37])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_keyframes_after_foresees_the_uniform_schedule(total, k):
    """Progress plans with `keyframes_after`: before the first frame and after every keyframe it counts
    exactly the keyframes the uniform schedule then places (K apart, and the last frame)."""
    options = ScheduleOptions(interval=k, scene_cuts=False)
    schedule = UniformSchedule(options)
    keys = [i for i in range(total) if i in schedule.decide(i, None).keyframes]
    assert list(schedule.finish().keyframes) == ([] if keys[-1] == total - 1 else [total - 1])
    if keys[-1] != total - 1:
        keys.append(total - 1)  # the flush makes the last frame a keyframe
    assert schedule.expected_keyframes(total) == keys
    assert schedule.keyframes_after(total, None) == len(keys)
    for n, key in enumerate(keys):
        assert schedule.keyframes_after(total, key) == len(keys) - n - 1
    fixed = FixedSchedule(frozenset({0, 5, 40}))  # the frames renderer's files; 40 is past a short video
    assert fixed.keyframes_after(total, None) == len([i for i in fixed.indices if i < total])


# -- the protocol: every schedule answers decide / finish / expected keyframes the same way ------------------


def drive(schedule: KeyframeSchedule, motions: list[Motion | None]) -> tuple[list[int], list[int], Plan]:
    """Keyframes and anchors of a whole stream, asking only what the protocol offers (as the Filter does)."""
    keys: list[int] = []
    anchors: list[int] = []
    for i, motion in enumerate(motions):
        plan = schedule.decide(i, motion)
        keys += plan.keyframes
        anchors += [] if plan.anchor is None else [plan.anchor]
    end = schedule.finish()
    assert end.anchor is None
    return keys + list(end.keyframes), anchors, end


@pytest.mark.parametrize(
    "schedule,keys,expected",
    [
        (UniformSchedule(ScheduleOptions(interval=8)), [0, 8, 16, 23], [0, 8, 16, 23]),
        (make_schedule(ScheduleOptions(interval=8)), [0, 8, 16, 23], [0, 8, 16, 23]),
        (AdaptiveSchedule(ScheduleOptions(interval=8, mode="adaptive")), [0, 8, 16, 23], None),
        (make_schedule(ScheduleOptions(interval=8, mode="adaptive")), [0, 8, 16, 23], None),
        # Frames 0-2 wait for frame 3 (backward propagation), 11-23 follow frame 10 (forward only).
        (FixedSchedule(frozenset({3, 10})), [3, 10], [3, 10]),
    ],
    ids=["uniform", "uniform-made", "adaptive", "adaptive-made", "fixed"],
)
def test_every_schedule_answers_through_the_protocol(schedule, keys, expected):
    total = 24
    assert schedule.expected_keyframes(total) == expected  # settings only: asked before and after
    assert schedule.keyframes_after(total, None) == len(keys)
    got, anchors, end = drive(schedule, [None] + [busy()] * (total - 1))  # constant motion
    assert got == keys and anchors == keys[:1] and end.warnings == ()
    assert schedule.expected_keyframes(total) == expected
    for n, key in enumerate(keys):
        assert schedule.keyframes_after(total, key) == len(keys) - n - 1


def test_motion_and_lookback_say_what_the_filter_must_keep():
    assert UniformSchedule(ScheduleOptions(scene_cuts=True)).needs_motion
    assert not UniformSchedule(ScheduleOptions(scene_cuts=False)).needs_motion
    assert AdaptiveSchedule(ScheduleOptions(mode="adaptive", scene_cuts=False)).needs_motion
    assert not FixedSchedule(frozenset({0})).needs_motion
    # Keyframes only: uniform closes with the frame before a cut or the end; fixed never looks back.
    assert UniformSchedule(ScheduleOptions()).lookback == 1
    assert AdaptiveSchedule(ScheduleOptions(mode="adaptive")).lookback is None
    assert FixedSchedule(frozenset({0})).lookback == 0


def test_adaptive_schedule_closes_a_scene_with_the_planners_split():
    schedule = AdaptiveSchedule(ScheduleOptions(interval=10))
    motions = [None] + [still()] * 5 + [busy()] * 11 + [Motion(0.8, 0.9, 30.0, 512)]
    plans = [schedule.decide(i, m) for i, m in enumerate(motions)]
    assert plans[0] == Plan((0,), anchor=0) and all(p == Plan() for p in plans[1:-1])  # window not full
    closing = plans[-1].keyframes[:-1]
    assert plans[-1].anchor == 17 and plans[-1].keyframes[-1] == 17
    # 16 frames since the anchor, about 2 gaps of K: the planner's equal-cost split, inside the motion.
    assert len(closing) == 2 and closing[-1] == 16 and 5 < closing[0] < 16
    assert schedule.finish() == Plan((), None)  # nothing after the cut frame


def test_fixed_schedule_warns_about_unused_files_and_fails_without_a_keyframe():
    schedule = FixedSchedule(frozenset({2, 30, 31}))
    keys, anchors, end = drive(schedule, [None] * 8)
    assert keys == [2] and anchors == [2]
    assert (
        len(end.warnings) == 1 and "2 keyframe file(s)" in end.warnings[0] and "frame 30" in end.warnings[0]
    )
    nothing = FixedSchedule(frozenset({50}))
    for i in range(5):
        assert nothing.decide(i, None) == Plan()
    with pytest.raises(UsageError, match=r"none of the keyframe files .*\(it has 5 frames"):
        nothing.finish()
    with pytest.raises(ValueError, match="at least one"):
        FixedSchedule(frozenset())


def test_plans_are_checked():
    with pytest.raises(ValueError, match="increasing"):
        Plan((4, 2))
    with pytest.raises(ValueError, match="anchor"):
        Plan((4,), anchor=5)
    with pytest.raises(ValueError, match="scene cuts"):
        Plan((3, 4), anchor=4, cuts=(SceneCut(3, 0.9, 1.0),))
