"""Progress in units of work: the ETA against a job whose per-unit costs are known, and the real job's events.

The ETA tests feed `EtaEstimator` the event stream of a job on an injected clock: a model of the job's two
threads (the pushing thread reads frames, renders keyframes and writes; the gap thread propagates, at most
one gap running and one waiting) with a fixed cost per unit of each kind. No sleeps, no timing asserts.
The last tests run the real job and check the units, the activity and the warnings reporters print.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from media import corrupt_clip, write_clip
from rerender.filter.events import (
    BadEvent,
    DoneEvent,
    FrameEvent,
    KeyframeEvent,
    SceneCutEvent,
    StartEvent,
    WarningEvent,
    from_json,
)
from rerender.filter.graph import GapProgress
from rerender.filter.job import parse_run_options, run_job
from rerender.filter.progress import EtaEstimator, WorkState, make_progress

FAST = ["--size", "64", "--search-vote-iters", "1", "--patchmatch-iters", "1", "--pyramid-levels", "2"]
FAST += ["--threads", "1"]
CLI = [sys.executable, "-m", "rerender.filter.cli", "run"]


@dataclass
class Gap:
    frames: list[int]
    start: float = 0.0
    end: float = 0.0


@dataclass
class Costs:
    read: float  # per frame read (decode, flow)
    render: float  # per keyframe
    propagate: float  # per in-between frame, wall time of its gap (two chains and the blend)
    write: float  # per frame written
    first_gap_extra: float = 0.0  # one-time set-up in the first gap (as the synthesizer's first call has)


@dataclass
class SimulatedJob:
    """A job of `total` frames, keyframes every `k` (and the last frame), on an injected clock."""

    total: int
    k: int
    costs: Costs
    states: list[tuple[float, WorkState]] = field(default_factory=list)
    end: float = 0.0

    def run(self) -> None:
        c = self.costs
        keys = sorted(set(range(0, self.total, self.k)) | {self.total - 1})
        gaps: list[Gap] = []
        ready: list[tuple[int, Gap | None]] = []  # output order: (frame, the gap it waits for)
        t, read, written, keyframes = 0.0, 0, 0, 0
        pending: list[int] = []
        bg_free = 0.0

        def snapshot(now: float) -> None:
            done = [g for g in gaps if g.end <= now]
            running = next((g for g in gaps if g.start <= now < g.end), None)
            gap = None
            if running is not None:
                steps = 2 * len(running.frames)
                share = (now - running.start) / (running.end - running.start)
                gap = GapProgress(
                    running.frames[0], running.frames[-1], steps, int(share * steps), now - running.start
                )
            between = self.total - len(keys)
            state = WorkState(
                total=self.total,
                read=read,
                read_seconds=read * c.read,
                keyframes=keyframes,
                keyframes_total=len(keys),
                render_seconds=keyframes * c.render,
                rendering=None,
                synthesized=sum(2 * len(g.frames) for g in done) + (gap.done if gap else 0),
                synthesis_total=2 * between,
                propagated=sum(len(g.frames) for g in done),
                propagated_total=between,
                propagation_seconds=sum(g.end - g.start for g in done),
                gap=gap,
                written=written,
                write_seconds=written * c.write,
                mean_gap=self.k - 1,
            )
            self.states.append((now, state))

        def drain(now: float, final: bool) -> float:
            nonlocal written
            while ready:
                frame, gap = ready[0]
                if gap is not None and gap.end > now:
                    if not final:
                        return now
                    snapshot(now)
                    now = gap.end
                ready.pop(0)
                now += c.write
                written += 1
                snapshot(now)
            return now

        for i in range(self.total):
            t += c.read
            read += 1
            snapshot(t)
            if i not in keys:
                pending.append(i)
                continue
            t += c.render
            keyframes += 1
            snapshot(t)
            gap = None
            if pending:
                start = max(t, bg_free)
                extra = c.first_gap_extra if not gaps else 0.0
                gap = Gap(pending, start, start + extra + c.propagate * len(pending))
                bg_free = gap.end
                gaps.append(gap)
                ready.extend((f, gap) for f in pending)
                # Back-pressure: with one gap running and this one waiting, a third waits for the first.
                unfinished = [g for g in gaps if g.end > t]
                if len(unfinished) > 1:
                    t = unfinished[0].end
                    snapshot(t)
            ready.append((i, gap))
            pending = []
            t = drain(t, final=False)
        self.end = drain(t, final=True)

    def errors_after_gap(self, gaps: int = 1) -> list[tuple[float, float, float]]:
        """(time, ETA, true seconds left) for every state after the first `gaps` gaps finished."""
        estimator = EtaEstimator()
        after = min(t for t, s in self.states if s.propagated >= (gaps - 1) * (self.k - 1) + 1)
        rows = []
        for now, state in self.states:
            eta = estimator.update(state)
            if now >= after and self.end - now > 0:
                assert eta is not None
                rows.append((now, eta, self.end - now))
        return rows


# The bound: after the first gap, the ETA is within 10% of the time left, or within the cost of one gap
# plus one keyframe when little is left (a gap's frames are released all at once).
def within_bound(eta: float, left: float, costs: Costs, k: int) -> bool:
    slack = (k - 1) * costs.propagate + costs.render
    return abs(eta - left) <= 0.10 * left + slack


@pytest.mark.parametrize(
    "costs",
    [
        Costs(read=0.02, render=0.05, propagate=0.4, write=0.01),  # the classic renderer: propagation-bound
        Costs(read=0.02, render=6.0, propagate=0.2, write=0.01),  # diffusion keyframes: render-bound
        Costs(read=0.05, render=1.5, propagate=0.3, write=0.02),  # about balanced
        Costs(read=0.02, render=0.05, propagate=0.4, write=0.01, first_gap_extra=3.0),  # slow first gap
    ],
    ids=["propagation-bound", "render-bound", "balanced", "slow-first-gap"],
)
@pytest.mark.parametrize("total,k", [(100, 10), (250, 5)])
def test_eta_after_the_first_gap_stays_within_the_bound(costs, total, k):
    job = SimulatedJob(total, k, costs)
    job.run()
    # A one-time cost in the first gap (the job pays the known ones before the first frame, but a renderer
    # or the machine may add others) weighs on the estimate until the second gap is measured.
    rows = job.errors_after_gap(2 if costs.first_gap_extra else 1)
    assert len(rows) > total  # an estimate at every unit of work
    bad = [
        (round(t, 2), round(eta, 2), round(left, 2))
        for t, eta, left in rows
        if not within_bound(eta, left, costs, k)
    ]
    assert not bad, bad[:5]
    # Halfway through, the estimate is close: within 5%.
    t, eta, left = min(rows, key=lambda row: abs(row[0] - job.end / 2))
    assert abs(eta - left) <= 0.05 * left, (t, eta, left)


def test_the_eta_is_unknown_until_every_kind_of_unit_has_a_cost():
    state = WorkState(
        total=20, read=3, read_seconds=0.3, keyframes=1, keyframes_total=3, render_seconds=1.0, rendering=None,
        synthesized=0, synthesis_total=34, propagated=0, propagated_total=17, propagation_seconds=0.0,
        gap=None, written=1, write_seconds=0.01,
    )  # fmt: skip
    estimator = EtaEstimator()
    assert estimator.update(state) is None  # nothing propagated yet: no honest estimate
    running = GapProgress(first=1, last=9, steps=18, done=9, seconds=4.5)  # half a gap: 1 s per frame
    from dataclasses import replace

    eta = estimator.update(replace(state, gap=running, synthesized=9))
    assert eta is not None and eta >= (17 - 4.5) * 1.0  # at least the propagation left
    assert estimator.update(replace(state, total=None, keyframes_total=None, propagated_total=None)) is None


# -- the real job ------------------------------------------------------------------------------------------


def test_job_events_count_units_of_work_and_name_the_activity(tmp_path):
    clip = write_clip(tmp_path / "in.mp4", width=64, height=48, frames=11, audio=False)  # MP4: a frame count
    options = parse_run_options(["-i", str(clip), "-o", str(tmp_path / "out.mp4"), "-K", "5", *FAST])
    events: list[dict] = []
    run_job(options, on_event=lambda event: events.append(event.to_json()))
    work = [e for e in events if "work" in e]
    assert work and all({"eta", "activity", "work"} <= set(e) for e in work)
    last = work[-1]["work"]
    # Keyframes 0, 5, 10; frames 1-4 and 6-9 are synthesized once per chain: 16 steps.
    assert last == {
        "read": 11, "keyframes": 3, "keyframes_total": 3, "synthesized": 16, "synthesis_total": 16,
        "written": 11, "total": 11,
    }  # fmt: skip
    for kind in ("read", "keyframes", "synthesized", "written"):
        values = [e["work"][kind] for e in work]
        assert values == sorted(values), kind  # units only go up
    assert all(e["work"]["keyframes_total"] == 3 and e["work"]["synthesis_total"] == 16 for e in work)
    activities = {e["activity"] for e in work}
    assert any(a.startswith("keyframe ") and "/3" in a for a in activities), activities
    frame_events = [e for e in events if e["event"] == "frame"]
    assert [e["index"] for e in frame_events] == list(range(11))  # the existing fields stay
    assert all({"done", "total", "fps", "eta"} <= set(e) for e in frame_events)


def test_bar_shows_the_activity_and_the_processing_size_line_and_quiet_keeps_warnings(tmp_path):
    clip = corrupt_clip(tmp_path, frames=12, broken=2, audio=False)
    options = parse_run_options(["-i", str(clip), "-o", str(tmp_path / "out.mkv"), "-K", "4", *FAST])
    outputs = {}
    for mode in ("bar", "json", "none"):
        stream = io.StringIO()
        reporter = make_progress(mode, stream)
        run_job(options, on_event=reporter)
        reporter.close()
        outputs[mode] = stream.getvalue()
    bar = outputs["bar"]
    assert "rerender run: processing at 128x64: " in bar
    assert "written" in bar and "ETA" in bar
    assert "rerender run: warning: 2 corrupt video packet(s)" in bar
    events = [json.loads(line) for line in outputs["json"].splitlines()]
    assert [e["message"] for e in events if e["event"] == "warning"] == [
        "2 corrupt video packet(s) produced no frame; the output has the frames that decoded"
    ]
    # The clip's dropped packets make a jump that the schedule may take for a scene cut: a line of its own.
    quiet = [line for line in outputs["none"].splitlines() if " scene cut at frame " not in line]
    assert quiet == [
        "rerender run: warning: 2 corrupt video packet(s) produced no frame; the output has the frames that "
        "decoded"
    ]


# -- typed events ------------------------------------------------------------------------------------------

# The keys (in order) of each `--progress json` line, as they were when the events were plain dicts.
JSON_KEYS = {
    "start": ["event", "total", "input", "output", "width", "height", "processing_size", "processing_note",
              "renderer", "keyframe_interval", "keyframes", "stage"],
    "keyframe": ["event", "index", "count", "eta", "activity", "work"],
    "frame": ["event", "index", "done", "total", "fps", "eta", "activity", "work"],
    "progress": ["event", "eta", "activity", "work"],
    "warning": ["event", "message"],
    "note": ["event", "message"],
    "scene_cut": ["event", "index", "histogram_distance", "occluded_fraction"],  # new with scene cuts
    "done": ["event", "frames", "keyframes", "seconds", "fps", "dropped", "output"],
}  # fmt: skip
WORK_KEYS = ["read", "keyframes", "keyframes_total", "synthesized", "synthesis_total", "written", "total"]


def test_progress_json_lines_keep_their_keys_and_round_trip_to_typed_events(tmp_path):
    clip = corrupt_clip(tmp_path, frames=12, broken=2, audio=False)  # a warning event too
    out = tmp_path / "out.mkv"
    done = subprocess.run(
        [*CLI, "-i", str(clip), "-o", str(out), "-K", "4", "--progress", "json", *FAST],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stderr.decode().splitlines()
    seen = set()
    for line in lines:
        data = json.loads(line)
        assert list(data) == JSON_KEYS[data["event"]], data
        if "work" in data:
            assert list(data["work"]) in (WORK_KEYS, [*WORK_KEYS, "total_estimated"])  # Matroska: estimated
        event = from_json(data)
        seen.add(type(event))
        # The typed event prints the very same line.
        assert json.dumps(event.to_json(), separators=(",", ":")) == line
    assert {StartEvent, KeyframeEvent, FrameEvent, WarningEvent, DoneEvent} <= seen


def test_events_from_json_refuse_what_is_not_an_event():
    good = {"event": "warning", "message": "m"}
    assert from_json(good) == WarningEvent("m")
    for bad in (
        [],
        {"event": "nope"},
        {"event": "warning"},
        {"event": "warning", "message": 3},
        {"event": "done", "frames": True, "keyframes": 1, "seconds": 1.0, "fps": None, "dropped": 0,
         "output": None},
        {"event": "progress", "eta": None, "activity": "", "work": {"read": 1}},
        {"event": "scene_cut", "index": 3, "histogram_distance": float("nan"), "occluded_fraction": 0.5},
    ):  # fmt: skip
        with pytest.raises(BadEvent):
            from_json(bad)


def test_scene_cut_event_json_and_the_readable_reporters_say_it():
    cut = SceneCutEvent(index=12, histogram_distance=0.75, occluded_fraction=0.5)
    assert cut.to_json() == {"event": "scene_cut", "index": 12, "histogram_distance": 0.75,
                             "occluded_fraction": 0.5}  # fmt: skip
    assert from_json(cut.to_json()) == cut
    for mode in ("bar", "none"):
        stream = io.StringIO()
        reporter = make_progress(mode, stream)
        reporter(cut)
        reporter.close()
        assert stream.getvalue().startswith("rerender run: scene cut at frame 12 ("), mode


CUT_CLIP = (
    "lavfi:testsrc2=size=128x64:rate=10:duration=1[a];smptebars=size=128x64:rate=10:duration=1[b];"
    "[a][b]concat[out0]"
)  # a hard cut at frame 10


def test_a_real_scene_cut_is_an_event_and_a_quiet_note(tmp_path):
    base = [*CLI, "-i", CUT_CLIP, "-o", str(tmp_path / "out.mkv"), *FAST]
    as_json = subprocess.run([*base, "--progress", "json"], capture_output=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr.decode()
    events = [from_json(json.loads(line)) for line in as_json.stderr.decode().splitlines()]
    cuts = [e for e in events if isinstance(e, SceneCutEvent)]
    assert [c.index for c in cuts] == [10]
    assert 0 < cuts[0].histogram_distance <= 1 and 0 <= cuts[0].occluded_fraction <= 1
    quiet = subprocess.run([*base, "-q"], capture_output=True, timeout=120)
    assert quiet.returncode == 0
    assert quiet.stderr.decode().splitlines() == [f"rerender run: {cuts[0].sentence()}"]
    assert quiet.stderr.decode().startswith("rerender run: scene cut at frame 10 (")


def test_workers_event_round_trips_and_refuses_reports_that_are_not_flat_objects():
    from rerender.filter.events import WorkersEvent

    event = WorkersEvent(
        gaps=({"worker": "h:12", "node": "n1", "gaps": 3, "frames": 27, "seconds": 4.5},),
        keyframes=({"host": "h", "pid": 13, "loads": 1, "keyframes": 4, "anchors_rebuilt": 0},),
    )
    line = json.dumps(event.to_json())
    assert from_json(json.loads(line)) == event
    for bad in (
        {"event": "workers", "gaps": {}, "keyframes": []},
        {"event": "workers", "gaps": [{"worker": {"nested": 1}}], "keyframes": []},
        {"event": "workers", "gaps": [], "keyframes": [3]},
        {"event": "workers", "gaps": [{}] * 5000, "keyframes": []},
    ):
        with pytest.raises(BadEvent):
            from_json(bad)
