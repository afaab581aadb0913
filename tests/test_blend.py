"""Temporal-aware blending of forward and backward propagations (rerender.native.blend, docs/method.md §4.2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rerender.native import SynthResult
from rerender.native.blend import (
    BlendParams,
    BlendResult,
    blend_pair,
    histogram_blend,
    poisson_fuse,
    screened_poisson,
)


def result(image: np.ndarray, error: np.ndarray) -> SynthResult:
    h, w = image.shape[:2]
    return SynthResult(image=image, error=error.astype(np.float32), nnf=np.zeros((h, w, 2), np.int32))


def smooth_rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.float32), (0, 0), 3)
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 25
    return img.astype(np.uint8)


def test_selection_favours_the_nearer_keyframe():
    a, b = smooth_rgb(24, 32, 0), smooth_rgb(24, 32, 1)
    err = np.random.default_rng(2).uniform(100, 200, (24, 32))
    near_forward = blend_pair(result(a, err), result(b, err), 0.2, None)
    near_backward = blend_pair(result(a, err), result(b, err), 0.8, None)
    assert isinstance(near_forward, BlendResult)
    assert near_forward.mask.dtype == bool and near_forward.mask.shape == (24, 32)
    assert not near_forward.mask.any()  # equal errors: 0.2 d < 0.8 d everywhere
    assert near_backward.mask.all()
    # At the keyframes' own sides the choice is forced, whatever the errors say.
    assert not blend_pair(result(a, err * 0), result(b, err * 100), 0.0, None).mask.any()
    assert blend_pair(result(a, err * 100), result(b, err * 0), 1.0, None).mask.all()


def test_selection_follows_the_errors_and_the_carried_mask_is_or_ed_in():
    a, b = smooth_rgb(20, 20, 3), smooth_rgb(20, 20, 4)
    err_a = np.full((20, 20), 100.0)
    err_b = np.full((20, 20), 120.0)
    err_a[:, :10] = 1000.0  # forward is bad on the left half
    carried = np.zeros((20, 20), bool)
    carried[15:, 15:] = True
    res = blend_pair(result(a, err_a), result(b, err_b), 0.5, carried)
    assert res.mask[:, :10].all()
    assert not res.mask[:15, 10:].any()
    assert res.mask[15:, 15:].all()  # once backward, stays backward (method §4.2)


def test_histogram_blend_keeps_mean_and_std_of_the_min_error_image():
    a, b = smooth_rgb(40, 48, 5), smooth_rgb(40, 48, 6)
    b = np.clip(b.astype(int) + 40, 0, 255).astype(np.uint8)  # a brighter backward propagation
    err_a = np.where(np.arange(48)[None, :] < 30, 10.0, 500.0).repeat(40, 0)
    err_b = np.full((40, 48), 100.0)
    res = blend_pair(result(a, err_a), result(b, err_b), 0.4, None, BlendParams(poisson=False))
    lab_min = cv2.cvtColor(np.where(res.mask[:, :, None], b, a), cv2.COLOR_RGB2Lab).astype(float)
    lab_out = cv2.cvtColor(res.image, cv2.COLOR_RGB2Lab).astype(float)
    assert res.image.dtype == np.uint8 and res.image.shape == a.shape
    np.testing.assert_allclose(lab_out.mean(axis=(0, 1)), lab_min.mean(axis=(0, 1)), atol=1.5)
    np.testing.assert_allclose(lab_out.std(axis=(0, 1)), lab_min.std(axis=(0, 1)), atol=1.5)
    # ...and it is a blend of both, not a copy of either.
    assert np.abs(res.image.astype(int) - a).mean() > 2 and np.abs(res.image.astype(int) - b).mean() > 2


def test_poisson_fusion_of_identical_propagations_returns_them():
    a = smooth_rgb(30, 34, 7)
    err = np.full((30, 34), 50.0)
    res = blend_pair(result(a, err), result(a.copy(), err), 0.5, None, BlendParams(poisson=True))
    # The blend works in 8-bit Lab (method §4.2), so compare with a's own Lab round trip.
    a_lab8 = cv2.cvtColor(cv2.cvtColor(a, cv2.COLOR_RGB2Lab), cv2.COLOR_Lab2RGB)
    assert np.abs(res.image.astype(int) - a_lab8.astype(int)).max() <= 2


def test_poisson_fusion_takes_gradients_from_the_selected_side():
    # forward has a sharp vertical edge, backward is flat; selecting forward must keep the edge.
    h, w = 32, 40
    a = np.full((h, w, 3), 90, np.uint8)
    a[:, 20:] = 170
    b = np.full((h, w, 3), 130, np.uint8)
    err_a, err_b = np.full((h, w), 1.0), np.full((h, w), 1000.0)
    plain = blend_pair(result(a, err_a), result(b, err_b), 0.5, None, BlendParams(poisson=False))
    fused = blend_pair(result(a, err_a), result(b, err_b), 0.5, None, BlendParams(poisson=True))
    assert not fused.mask.any()

    def edge_step(img):
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab).astype(float)[:, :, 0]
        return lab[:, 22:].mean() - lab[:, :18].mean()

    step_a = edge_step(a)
    assert edge_step(fused.image) > 0.8 * step_a
    assert edge_step(plain.image) > 0.8 * step_a


def test_screened_poisson_solves_the_normal_equations():
    rng = np.random.default_rng(8)
    h, w, weight = 7, 9, 1.7
    data = rng.uniform(0, 50, (h, w))
    gx = rng.uniform(-5, 5, (h, w))
    gy = rng.uniform(-5, 5, (h, w))
    gx[:, -1] = 0
    gy[-1, :] = 0
    u = screened_poisson(data, gx, gy, weight)
    # Brute force: dense forward-difference operator D, solve (I + w D^T D) u = data + w D^T g.
    n = h * w
    rows = []
    for y in range(h):
        for x in range(w - 1):
            r = np.zeros(n)
            r[y * w + x + 1], r[y * w + x] = 1, -1
            rows.append(r)
    for y in range(h - 1):
        for x in range(w):
            r = np.zeros(n)
            r[(y + 1) * w + x], r[y * w + x] = 1, -1
            rows.append(r)
    d = np.array(rows)
    g = np.concatenate([gx[:, :-1].ravel(), gy[:-1, :].ravel()])
    expected = np.linalg.solve(np.eye(n) + weight * d.T @ d, data.ravel() + weight * d.T @ g)
    np.testing.assert_allclose(u.ravel(), expected, atol=1e-9)


def _reference_system_solve(base, lab_a, lab_b, mask, weights, clip=100.0):
    """The authors' Poisson system written out as a sparse least-squares problem and solved with lsqr:
    per channel, rows [w·Gy; w·Gx; I] (backward differences x[i] − x[i+1], zero rows at the far border)
    against [w·gy; w·gx; base − mean(base)], gradients from a where mask is 0 and b where it is 1."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import lsqr

    h, w = mask.shape
    n = h * w
    index = np.arange(n).reshape(h, w)

    def difference(axis: int) -> sp.csr_matrix:
        first = index[:-1, :] if axis == 0 else index[:, :-1]
        second = index[1:, :] if axis == 0 else index[:, 1:]
        rows = np.concatenate([first.ravel(), first.ravel()])
        cols = np.concatenate([first.ravel(), second.ravel()])
        values = np.concatenate([np.ones(first.size), -np.ones(first.size)])
        return sp.csr_matrix((values, (rows, cols)), shape=(n, n))

    gy_op, gx_op = difference(0), difference(1)
    m = mask.astype(float)
    out = np.empty_like(base)
    for c, weight in enumerate(weights):
        a, b = lab_a[:, :, c], lab_b[:, :, c]
        gy = np.zeros((h, w))
        gx = np.zeros((h, w))
        gy[:-1] = (a[:-1] - a[1:]) * (1 - m[:-1]) + (b[:-1] - b[1:]) * m[:-1]
        gx[:, :-1] = (a[:, :-1] - a[:, 1:]) * (1 - m[:, :-1]) + (b[:, :-1] - b[:, 1:]) * m[:, :-1]
        gy, gx = np.clip(gy, -clip, clip), np.clip(gx, -clip, clip)
        data = base[:, :, c].ravel()
        mean = data.mean()
        system = sp.vstack([gy_op * weight, gx_op * weight, sp.identity(n, format="csr")])
        rhs = np.concatenate([gy.ravel() * weight, gx.ravel() * weight, data - mean])
        solution = lsqr(system, rhs, atol=1e-14, btol=1e-14, conlim=1e12, iter_lim=20000)[0]
        out[:, :, c] = (solution + mean).reshape(h, w)
    return out


def test_poisson_fusion_matches_a_least_squares_solve_of_the_authors_system():
    h, w = 32, 32
    a, b = smooth_rgb(h, w, 10), smooth_rgb(h, w, 11)
    a[:, 12:14] = 250  # a sharp edge, so the gradients and their clip matter
    lab_a = cv2.cvtColor(a, cv2.COLOR_RGB2Lab).astype(np.float64)
    lab_b = cv2.cvtColor(b, cv2.COLOR_RGB2Lab).astype(np.float64)
    mask = np.zeros((h, w), bool)
    mask[5:20, 10:28] = True
    base = histogram_blend(lab_a, lab_b, np.where(mask[:, :, None], lab_b, lab_a), 0.4)
    params = BlendParams(poisson=True)
    got = poisson_fuse(base, lab_a, lab_b, mask, params)
    want = _reference_system_solve(base, lab_a, lab_b, mask, params.poisson_weights)
    assert np.abs(got - want).max() < 1e-3
    # The weight multiplies the rows (w² in the objective): solving with w instead differs visibly.
    linear = np.stack(
        [
            screened_poisson(base[:, :, c], *_selected_gradients(lab_a[:, :, c], lab_b[:, :, c], mask), wgt)
            for c, wgt in enumerate(params.poisson_weights)
        ],
        axis=2,
    )
    assert np.abs(linear - want).max() > 0.1


def _selected_gradients(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = np.zeros_like(a)
    gy = np.zeros_like(a)
    gx[:, :-1] = np.where(mask[:, :-1], b[:, 1:] - b[:, :-1], a[:, 1:] - a[:, :-1])
    gy[:-1] = np.where(mask[:-1], b[1:] - b[:-1], a[1:] - a[:-1])
    return np.clip(gx, -100, 100), np.clip(gy, -100, 100)


def test_poisson_fusion_is_off_by_default():
    assert not BlendParams().poisson


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_forward": 1.5}, r"in \[0, 1\]"),
        ({"carried_mask": np.zeros((4, 4), np.uint8)}, "bool array"),
        ({"forward": result(np.zeros((6, 6, 4), np.uint8), np.zeros((6, 6)))}, "RGB"),
        ({"backward": result(np.zeros((5, 6, 3), np.uint8), np.zeros((5, 6)))}, "same shape"),
    ],
)
def test_invalid_blend_input_is_a_value_error(kwargs, message):
    img = smooth_rgb(6, 6, 9)
    args = {
        "forward": result(img, np.zeros((6, 6))),
        "backward": result(img, np.zeros((6, 6))),
        "weight_forward": 0.5,
        "carried_mask": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        blend_pair(**args)


def test_blend_params_are_validated():
    with pytest.raises(ValueError, match="three finite numbers"):
        BlendParams(poisson_weights=(1.0, 2.0))


def _still_pairs(n: int, h: int, w: int, occluded: np.ndarray | None = None):
    from rerender.engines.flow import FlowPair

    zero = np.zeros((h, w, 2), np.float32)
    mask = np.zeros((h, w), bool) if occluded is None else occluded
    return [FlowPair(zero, zero, mask, mask) for _ in range(n + 1)]


def test_keyframe_pull_carries_the_keyframe_into_its_neighbours_where_nothing_was_occluded():
    from rerender.filter.propagation import pull_towards_keyframes

    h, w, n = 40, 48, 4
    frames = [smooth_rgb(h, w, seed) for seed in range(n)]
    left, right = smooth_rgb(h, w, 10), smooth_rgb(h, w, 11)
    occluded = np.zeros((h, w), bool)
    occluded[:, 24:] = True  # the right half has no match anywhere in the gap
    pairs = _still_pairs(n, h, w, occluded)
    out = pull_towards_keyframes(frames, (left, right), pairs, 1.0, 2)
    # Full strength one frame from a keyframe: the keyframe itself where the pixels were matched (away from
    # the feathered edge of the mask); half of it two frames away; the occluded half untouched.
    assert np.array_equal(out[0][:, :18], left[:, :18]) and np.array_equal(out[-1][:, :18], right[:, :18])
    half = (frames[1][:, :18].astype(np.float32) + left[:, :18]) / 2
    assert np.abs(out[1][:, :18] - half).max() <= 1
    for t in range(n):
        assert np.array_equal(out[t][:, 30:], frames[t][:, 30:])
    # Without strength nothing changes; the inputs are never written.
    assert all(
        np.array_equal(a, b)
        for a, b in zip(pull_towards_keyframes(frames, (left, right), pairs, 0.0, 2), frames, strict=True)
    )
    only_left = pull_towards_keyframes(frames, (left, None), pairs, 1.0, 1)
    assert np.array_equal(only_left[-1], frames[-1]) and np.array_equal(only_left[0][:, :18], left[:, :18])


def test_blend_gap_pulls_only_when_asked():
    from rerender.filter.propagation import PropagationOptions, Timings, blend_gap

    h, w, n = 32, 32, 3
    forward = [result(smooth_rgb(h, w, s), np.ones((h, w))) for s in range(n)]
    backward = [result(smooth_rgb(h, w, 5 + s), np.ones((h, w))) for s in range(n)]
    keys = (smooth_rgb(h, w, 20), smooth_rgb(h, w, 21))
    pairs = _still_pairs(n, h, w)
    plain = blend_gap(forward, backward, pairs, PropagationOptions(), Timings())
    same = blend_gap(forward, backward, pairs, PropagationOptions(keyframe_pull=0.0), Timings(), keys=keys)
    pulled = blend_gap(
        forward,
        backward,
        pairs,
        PropagationOptions(keyframe_pull=1.0, keyframe_pull_reach=1),
        Timings(),
        keys=keys,
    )
    assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))
    assert np.array_equal(pulled[0], keys[0]) and np.array_equal(pulled[-1], keys[1])
    with pytest.raises(ValueError, match="--keyframe-pull"):
        PropagationOptions(keyframe_pull=1.5)
    with pytest.raises(ValueError, match="keyframe_pull_reach"):
        PropagationOptions(keyframe_pull_reach=0)
