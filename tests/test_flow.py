"""engines/flow.py: DIS flow convention, forward-backward occlusion (alpha 0.01, beta 0.5), warping."""

from __future__ import annotations

import numpy as np
import pytest
from media import texture
from rerender.engines.flow import (
    DISFlow,
    estimate_pair,
    make_flow_estimator,
    occlusion,
    outside,
    warp,
)
from rerender.filter.errors import UsageError


def shifted_pair(dx: int, dy: int, width: int = 128, height: int = 96):
    """`later` is `earlier` with its content moved by (dx, dy) pixels."""
    big = texture(5, width + 40, height + 40)
    earlier = np.ascontiguousarray(big[20 : 20 + height, 20 : 20 + width])
    later = np.ascontiguousarray(big[20 - dy : 20 - dy + height, 20 - dx : 20 - dx + width])
    return earlier, later


def test_dis_flow_of_a_translation_points_back_to_the_earlier_frame():
    earlier, later = shifted_pair(3, -2)
    flow = DISFlow().estimate(later, earlier)  # later(p) ~ earlier(p + flow(p))
    inner = flow[16:-16, 16:-16]
    assert np.median(inner[..., 0]) == pytest.approx(-3, abs=0.25)
    assert np.median(inner[..., 1]) == pytest.approx(2, abs=0.25)
    warped = warp(earlier, flow)
    error = np.abs(warped[16:-16, 16:-16].astype(int) - later[16:-16, 16:-16]).mean()
    assert error < 4


def test_pair_occlusion_marks_the_content_that_enters_the_frame():
    earlier, later = shifted_pair(6, 0)
    pair = estimate_pair(DISFlow(), earlier, later)
    # Content moved right by 6 px: the leftmost columns of `later` have no match in `earlier`.
    assert pair.occluded_later[:, :4].mean() > 0.9
    assert pair.occluded_later[10:-10, 20:-20].mean() < 0.05
    # And the rightmost columns of `earlier` leave the frame.
    assert pair.occluded_earlier[:, -4:].mean() > 0.9
    assert pair.mean_motion == pytest.approx(6, abs=1.0)


def test_occlusion_uses_the_official_thresholds():
    h, w = 8, 8
    forward = np.zeros((h, w, 2), np.float32)
    forward[..., 0] = 1.0  # everything moves one pixel right
    consistent = -forward
    assert not occlusion(forward, consistent)[:, :-1].any()
    # An inconsistency of 0.5 + 0.01 * (|f| + |b|) = 0.52 px is the limit: 0.5 px passes, 0.6 px fails.
    assert not occlusion(forward, consistent + np.float32([0.5, 0]))[:, :-1].any()
    assert occlusion(forward, consistent + np.float32([0.6, 0]))[:, :-1].all()
    assert occlusion(forward, consistent)[:, -1].all()  # flows out of the frame


def test_warp_nearest_keeps_values_and_masks_stay_boolean():
    mask = np.zeros((6, 6), bool)
    mask[2, 2] = True
    flow = np.zeros((6, 6, 2), np.float32)
    flow[..., 0] = -1.0  # sample one pixel to the left: the mark moves right
    moved = warp(mask, flow, nearest=True)
    assert moved.dtype == bool and moved[2, 3] and moved.sum() == 1
    assert outside(flow)[:, 0].all() and not outside(flow)[:, 1:].any()


def test_make_flow_estimator_names():
    assert make_flow_estimator("dis").name == "dis:medium"
    assert make_flow_estimator("dis:ultrafast").name == "dis:ultrafast"
    with pytest.raises(UsageError, match="--flow"):
        make_flow_estimator("farneback")
    with pytest.raises(UsageError, match="preset"):
        make_flow_estimator("dis:slowest")


def gradient_pair(dx: int, width: int = 160, height: int = 96):
    """A smooth horizontal gradient with one textured square; `later` has everything moved right by dx,
    and a flat grey band enters at the left (revealed content that `earlier` never showed)."""
    big = np.zeros((height, width + dx, 3), np.uint8)
    ramp = np.linspace(40, 200, width + dx, dtype=np.float32)
    big[...] = ramp[None, :, None].astype(np.uint8)
    big[30:60, 80:110] = texture(3, 30, 30)
    earlier = np.ascontiguousarray(big[:, dx:])
    later = np.ascontiguousarray(big[:, :width])
    later[:, :dx] = 250  # revealed: a colour that appears nowhere in `earlier`
    return earlier, later


def test_photometric_rule_keeps_a_moved_smooth_gradient_and_flags_revealed_content():
    from rerender.engines.flow import OcclusionRule

    earlier, later = gradient_pair(8)
    fb = estimate_pair(DISFlow(), earlier, later)
    photo = estimate_pair(DISFlow(), earlier, later, OcclusionRule(photometric=3.0))
    smooth = np.zeros(later.shape[:2], bool)
    smooth[:, 24:70] = True  # gradient only, away from the square and the revealed band
    # The photometric rule never flags more than the forward-backward check alone.
    assert not (photo.occluded_later & ~fb.occluded_later).any()
    # DIS on a smooth gradient fails the forward-backward check in places although the warp is right; the
    # photometric rule keeps those pixels ...
    assert fb.occluded_later[smooth].mean() > 0.1
    assert photo.occluded_later[smooth].mean() < 0.05
    # ... while the revealed band stays occluded under both rules.
    assert photo.occluded_later[:, :6].mean() > 0.85 and fb.occluded_later[:, :6].mean() > 0.85


def test_photometric_rule_needs_both_frames_and_bounded_values():
    from rerender.engines.flow import OcclusionRule

    flow = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="both frames"):
        occlusion(flow, flow, OcclusionRule(photometric=3.0))
    with pytest.raises(ValueError, match="0..255"):
        OcclusionRule(photometric=300.0)
    with pytest.raises(ValueError, match="alpha"):
        OcclusionRule(alpha=-1.0)


def test_dis_refinement_settings_smooth_the_flow_of_a_gradient_and_are_validated():
    earlier, later = gradient_pair(8)
    plain = estimate_pair(DISFlow(), earlier, later)
    refined = estimate_pair(DISFlow(refinement_iterations=20, smoothness=40.0), earlier, later)
    assert DISFlow(refinement_iterations=20, smoothness=40.0).name == "dis:medium,refine=20,alpha=40"
    # The refined flow differs, and flags fewer pixels of the moved gradient (its flow is smoother there).
    assert not np.array_equal(plain.later_to_earlier, refined.later_to_earlier)
    smooth = np.zeros(later.shape[:2], bool)
    smooth[:, 24:70] = True
    assert refined.occluded_later[smooth].mean() <= plain.occluded_later[smooth].mean()
    with pytest.raises(ValueError, match="refinement iterations"):
        DISFlow(refinement_iterations=1000)
    with pytest.raises(ValueError, match="smoothness"):
        DISFlow(smoothness=0.0)
