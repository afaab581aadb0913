"""The streaming Filter: order, count and timestamps, flushing, scene cuts, a schedule of the caller's own,
bit depth, bounded memory.

Real parts throughout: DIS flow, the native synthesizer (with few iterations: small frames), the blend.
The keyframe renderers here are small real implementations of the renderer interface.
"""

from __future__ import annotations

import gc
from fractions import Fraction

import numpy as np
import psutil
import pytest
from media import texture
from rerender.filter.frames import Frame
from rerender.filter.graph import Filter, FilterOptions
from rerender.filter.propagation import PropagationOptions
from rerender.filter.renderers.base import KeyframeContext
from rerender.filter.renderers.classic import ClassicRenderer
from rerender.filter.schedule import Motion, Plan, ScheduleOptions
from rerender.native.params import SynthParams

FAST = PropagationOptions(
    SynthParams(search_vote_iters=1, patchmatch_iters=1, pyramid_levels=2, threads=1), inpaint_radius=5
)
TIME_BASE = Fraction(1, 90000)


class Posterize:
    """A per-pixel renderer (inverted, posterized colours) that records the contexts it was given."""

    name = "posterize"

    def __init__(self, record: bool = True) -> None:
        self.record = record
        self.contexts: list[KeyframeContext] = []

    def render(self, frame: np.ndarray, context: KeyframeContext) -> np.ndarray:
        if self.record:
            self.contexts.append(context)
        return (255 - frame) // 32 * 32 + 16


def make_frames(
    n: int, width: int = 40, height: int = 32, start_pts: int = 1000, step: int = 3003
) -> list[Frame]:
    return [Frame(i, start_pts + i * step, TIME_BASE, texture(i, width, height)) for i in range(n)]


def run(filt: Filter, frames: list[Frame]) -> list[Frame]:
    """Push every frame, pulling whatever is ready after each push, then flush and drain."""
    out: list[Frame] = []
    for frame in frames:
        filt.push(frame)
        while True:
            try:
                out.append(filt.pull())
            except BlockingIOError:
                break
    filt.push(None)
    while True:
        try:
            out.append(filt.pull())
        except EOFError:
            return out


def options(k: int, **kwargs) -> FilterOptions:
    return FilterOptions(schedule=ScheduleOptions(interval=k), size=64, propagation=FAST, **kwargs)


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_count_order_and_timestamps_are_kept(k):
    frames = make_frames(13)
    keys: list[int] = []
    filt = Filter(Posterize(), options(k), on_keyframe=lambda i, src, sty: keys.append(i))
    out = run(filt, frames)
    assert [f.index for f in out] == list(range(13))
    assert [f.pts for f in out] == [f.pts for f in frames]
    assert all(f.time_base == TIME_BASE for f in out)
    assert all(f.image.shape == (32, 40, 3) and f.image.dtype == np.uint8 for f in out)
    expected = sorted(set(range(0, 13, k)) | {12})
    assert keys == expected
    # Keyframes come out as rendered (posterized input resized back); the others are propagated.
    for f in out:
        if f.index in keys:
            reference = (255 - frames[f.index].image) // 32 * 32 + 16
            assert np.abs(f.image.astype(int) - reference).mean() < 20


def test_pull_blocks_until_a_gap_is_closed():
    filt = Filter(Posterize(), options(4, overlap=False))  # synchronous: ready as soon as push returns
    frames = make_frames(6)
    filt.push(frames[0])
    assert filt.pull().index == 0  # the anchor is ready at once
    for frame in frames[1:4]:
        filt.push(frame)
        with pytest.raises(BlockingIOError):
            filt.pull()
    filt.push(frames[4])  # keyframe 4 closes the gap 1..3
    assert [filt.pull().index for _ in range(4)] == [1, 2, 3, 4]
    with pytest.raises(BlockingIOError):
        filt.pull()


def test_background_propagation_keeps_the_order_and_waits_at_the_flush():
    filt = Filter(Posterize(), options(3))
    out = run(filt, make_frames(11))
    assert [f.index for f in out] == list(range(11))
    filt.close()


def test_an_error_while_propagating_reaches_the_caller():
    def stop() -> None:
        if filt.keyframe_count >= 2:
            raise KeyboardInterrupt("stop")

    filt = Filter(Posterize(), options(3), check_cancel=stop)
    with pytest.raises(KeyboardInterrupt):
        for frame in make_frames(7):
            filt.push(frame)
        filt.push(None)
        while True:
            filt.pull()
    filt.close()


def test_flush_with_no_frames():
    filt = Filter(Posterize(), options(4))
    filt.push(None)
    with pytest.raises(EOFError):
        filt.pull()
    with pytest.raises(ValueError, match="flushed"):
        filt.push(make_frames(1)[0])


@pytest.mark.parametrize("n", [1, 5])  # one frame; K + 1 frames (the last is the second keyframe)
def test_flush_with_one_and_k_plus_one_frames(n):
    renderer = Posterize()
    out = run(Filter(renderer, options(4)), make_frames(n))
    assert [f.index for f in out] == list(range(n))
    assert [c.index for c in renderer.contexts] == ([0] if n == 1 else [0, 4])


def test_flush_makes_the_last_frame_a_keyframe():
    renderer = Posterize()
    out = run(Filter(renderer, options(4)), make_frames(7))
    assert [c.index for c in renderer.contexts] == [0, 4, 6]
    assert len(out) == 7


def two_scenes(n_a: int, n_b: int) -> list[Frame]:
    """A warm textured scene, then a cut to a cold, differently textured one."""
    frames = []
    for i in range(n_a + n_b):
        image = texture(i, 40, 32)
        if i >= n_a:
            image = np.ascontiguousarray(image[::-1, ::-1, ::-1])  # flipped, colours swapped: a new shot
            image[..., 2] = np.maximum(image[..., 2], 200)
            image[..., 0] //= 3
        else:
            image[..., 0] = np.maximum(image[..., 0], 200)
            image[..., 2] //= 3
        frames.append(Frame(i, i * 3003, TIME_BASE, image))
    return frames


def test_a_scene_cut_starts_a_new_anchor_and_nothing_crosses_it():
    renderer = Posterize()
    frames = two_scenes(10, 9)
    out = run(Filter(renderer, options(4)), frames)
    assert [f.index for f in out] == list(range(19))
    by_index = {c.index: c for c in renderer.contexts}
    # Keyframes: 0, 4, 8, then 9 (closes the first scene before the cut), 10 (new anchor), 14, 18.
    assert sorted(by_index) == [0, 4, 8, 9, 10, 14, 18]
    assert by_index[10].is_anchor and by_index[10].anchor is None and by_index[10].previous is None
    assert not by_index[9].is_anchor and by_index[9].anchor.index == 0
    assert by_index[14].anchor.index == 10 and by_index[14].previous.index == 10
    # Posterized warm scene: the red channel is dark (inverted); cold scene: the blue channel is dark.
    # A propagation across the cut would bring the other scene's colours into these frames.
    for f in out:
        red, blue = f.image[..., 0].mean(), f.image[..., 2].mean()
        assert (red < blue) if f.index < 10 else (blue < red), f.index


class Listed:
    """A schedule of the caller's own (no class of schedule.py): keyframes at the listed frames, the given
    ones anchors; frames after the last keyframe are left to forward propagation."""

    needs_motion = True
    lookback = 0

    def __init__(self, keys: list[int], anchors: set[int]) -> None:
        self.keys, self.anchors = keys, anchors
        self.motions: list[Motion | None] = []

    def decide(self, index: int, motion: Motion | None) -> Plan:
        self.motions.append(motion)
        if index not in self.keys:
            return Plan()
        return Plan((index,), anchor=index if index in self.anchors else None)

    def finish(self) -> Plan:
        return Plan(warnings=(f"{len(self.motions)} frames listed",))

    def expected_keyframes(self, total: int) -> list[int] | None:
        return [k for k in self.keys if k < total]

    def keyframes_after(self, total: int, last_key: int | None) -> int:
        return sum(1 for k in self.keys if (last_key is None or k > last_key) and k < total)


@pytest.mark.parametrize("propagate", [True, False])
def test_the_filter_follows_a_schedule_of_its_callers_own(propagate):
    """The Filter asks its schedule only through the protocol: the options' K (2, with scene cuts) is not
    used; anchors reset the scene, frames before the first keyframe of a scene are propagated backward,
    frames after the last one forward, and nothing crosses an anchor."""
    renderer = Posterize()
    schedule = Listed([2, 5, 8], anchors={2, 8})
    warnings: list[str] = []
    filt = Filter(renderer, options(2, propagate=propagate), schedule=schedule, on_warning=warnings.append)
    assert filt.schedule is schedule
    out = run(filt, two_scenes(6, 6))
    assert [c.index for c in renderer.contexts] == [2, 5, 8]
    first, middle, second = renderer.contexts
    assert (
        first.is_anchor and not middle.is_anchor and middle.anchor.index == 2 and middle.previous.index == 2
    )
    assert second.is_anchor and second.anchor is None and second.previous is None
    assert warnings == ["12 frames listed"]
    assert schedule.motions[0] is None and all(isinstance(m, Motion) for m in schedule.motions[1:])
    if not propagate:
        assert [f.index for f in out] == [2, 5, 8]  # keyframes only
        return
    assert [f.index for f in out] == list(range(12))
    for f in out:  # 6 and 7 come from keyframe 8 alone, 9-11 from it forward: no colour crosses the cut
        red, blue = f.image[..., 0].mean(), f.image[..., 2].mean()
        assert (red < blue) if f.index < 6 else (blue < red), f.index


def test_a_schedule_that_chooses_no_keyframe_is_an_error_at_the_flush():
    filt = Filter(Posterize(), options(2), schedule=Listed([], anchors=set()))
    for frame in make_frames(3):
        filt.push(frame)
    with pytest.raises(RuntimeError, match="no keyframe among the 3 frames"):
        filt.push(None)


def test_scene_cuts_can_be_turned_off():
    renderer = Posterize()
    opts = FilterOptions(schedule=ScheduleOptions(interval=4, scene_cuts=False), size=64, propagation=FAST)
    run(Filter(renderer, opts), two_scenes(10, 9))
    assert [c.index for c in renderer.contexts] == [0, 4, 8, 12, 16, 18]


def test_adaptive_keyframes_follow_the_motion():
    """12 frames of a held picture, then 12 of a moving texture: adaptive (K=4) puts its keyframes where
    the picture moves, and still emits every frame in order."""
    images = [texture(0, 40, 32)] * 12 + [texture(3 * i, 40, 32) for i in range(1, 13)]
    frames = [Frame(i, i, TIME_BASE, image) for i, image in enumerate(images)]
    keys: list[int] = []
    opts = FilterOptions(
        schedule=ScheduleOptions(interval=4, mode="adaptive", scene_cuts=False), size=64, propagation=FAST
    )
    out = run(Filter(Posterize(), opts, on_keyframe=lambda i, s, t: keys.append(i)), frames)
    assert [f.index for f in out] == list(range(24))
    assert keys[0] == 0 and keys[-1] == 23
    held = [k for k in keys if 0 < k < 12]
    moving = [k for k in keys if k >= 12]
    assert len(moving) > len(held) and len(moving) > 3  # uniform K=4 would put 3 in each part


def test_high_bit_depth_frames_come_back_in_their_depth():
    frames = [Frame(i, i, TIME_BASE, texture(i, 40, 32, bit_depth=10)) for i in range(5)]
    out = run(Filter(Posterize(), options(2)), frames)
    assert all(f.image.dtype == np.uint16 for f in out)
    assert all(np.all(f.image % 257 == 0) for f in out)  # 8-bit processing, full-scale 16-bit output
    reference = (255 - (frames[2].image // 257).astype(np.uint8)) // 32 * 32 + 16
    assert np.abs(out[2].image // 257 - reference.astype(int)).mean() < 20


def test_propagation_at_output_size_and_the_classic_renderer():
    frames = make_frames(5, width=70, height=50)
    out = run(Filter(ClassicRenderer(), options(4, propagate_at="output")), frames)
    assert [f.image.shape for f in out] == [(50, 70, 3)] * 5


def test_frames_must_come_in_order_and_keep_their_size():
    filt = Filter(Posterize(), options(4))
    frames = make_frames(3)
    filt.push(frames[1])
    with pytest.raises(ValueError, match="in order"):
        filt.push(frames[0])
    with pytest.raises(Exception, match="size changes"):
        filt.push(Frame(2, 2, TIME_BASE, texture(2, 48, 32)))


def test_memory_stays_flat_over_a_long_stream():
    """3,000 frames through propagation: resident memory must not grow with the stream's length.

    16x16 frames propagated at that size (`propagate_at="output"`) keep the synthesis cheap."""
    process = psutil.Process()
    opts = FilterOptions(
        schedule=ScheduleOptions(interval=10, scene_cuts=False),
        size=64,
        propagation=FAST,
        propagate_at="output",
    )
    filt = Filter(Posterize(record=False), opts)
    images = [texture(i, 16, 16) for i in range(20)]
    pulled = 0

    def push_range(start: int, stop: int) -> None:
        nonlocal pulled
        for i in range(start, stop):
            # A slow back-and-forth drift: no scene cuts, every frame goes through a propagation chain.
            filt.push(Frame(i, i, TIME_BASE, images[abs(i % 38 - 19)]))
            while True:
                try:
                    filt.pull()
                    pulled += 1
                except BlockingIOError:
                    break

    push_range(0, 300)  # warm-up: allocator pools, OpenCV/native buffers
    gc.collect()
    before = process.memory_info().rss
    push_range(300, 3000)
    gc.collect()
    growth = process.memory_info().rss - before
    filt.push(None)
    while True:
        try:
            filt.pull()
            pulled += 1
        except EOFError:
            break
    assert pulled == 3000
    assert filt.keyframe_count == 301  # 0, 10, ..., 2990 and the last frame: propagation ran throughout
    # Keeping every frame (input, 64x64 keyframe copies, flow pairs: ~10 kB and more) would add >25 MB.
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 2,700 frames"


class PoolRunner:
    """A gap runner of the caller's own (gaps.py's protocol): three threads, a window of three gaps."""

    window = 3

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(3)
        self.futures: list = []
        self.most_unfinished = 0

    def submit(self, task, hooks):
        from rerender.filter.gaps import run_gap

        unfinished = sum(not f.done() for f in self.futures)
        self.most_unfinished = max(self.most_unfinished, unfinished)

        def work():
            hooks.started()
            return run_gap(task, hooks.timings, hooks.step, None)

        future = self.pool.submit(work)
        self.futures.append(future)
        return future

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def test_gaps_run_on_a_runner_passed_in_with_its_window_and_the_same_frames():
    frames = make_frames(41)
    expected = run(Filter(Posterize(record=False), options(4)), frames)
    runner = PoolRunner()
    filt = Filter(Posterize(record=False), options(4), gaps=runner)
    out = run(filt, frames)
    assert [(f.index, f.pts) for f in out] == [(f.index, f.pts) for f in expected]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, expected, strict=True))
    work = filt.work()
    assert work.gaps == len(runner.futures) == 10 and work.propagated == 41 - 11
    assert work.synthesized == work.propagated_steps == 2 * 30 and work.gap is None
    assert runner.most_unfinished <= runner.window - 1  # the Filter waited for the oldest beyond the window
