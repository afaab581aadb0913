"""Colour correction of the SDEdit source (`--color-correct`, the authors' `color_preserve = False`).

The input keyframe is histogram-matched per Lab channel to the anchor's stylised output, converted back to
RGB, then recombined with a luminosity blend: luminosity from the original frame, hue and saturation from
the matched one (the W3C non-separable "luminosity" blend mode). The result is used only as the SDEdit source;
ControlNet hints and flow still use the raw frame.
"""

from __future__ import annotations

import cv2
import numpy as np


def match_histogram(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map `source` values so their distribution equals `target`'s (quantile matching, one channel)."""
    src_values, src_index, src_counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    tgt_values, tgt_counts = np.unique(target.ravel(), return_counts=True)
    src_quantiles = np.cumsum(src_counts) / source.size
    tgt_quantiles = np.cumsum(tgt_counts) / target.size
    mapped = np.interp(src_quantiles, tgt_quantiles, tgt_values)
    return mapped[src_index].reshape(source.shape)


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.3, 0.59, 0.11])


def _set_lum(rgb: np.ndarray, lum: np.ndarray) -> np.ndarray:
    # W3C compositing spec SetLum/ClipColor: shift to the new luminosity, then pull back into [0, 1].
    c = rgb + (lum - _lum(rgb))[..., None]
    l_ = _lum(c)[..., None]
    n = c.min(axis=-1, keepdims=True)
    x = c.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(n < 0, l_ + (c - l_) * l_ / np.maximum(l_ - n, 1e-12), c)
        high = np.where(x > 1, l_ + (low - l_) * (1 - l_) / np.maximum(x - l_, 1e-12), low)
    return np.clip(high, 0.0, 1.0)


def color_correct(frame: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB uint8 frame -> RGB uint8 frame with `target`'s Lab colour distribution and its own luminosity."""
    lab = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab_target = cv2.cvtColor(target.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    matched = np.stack([match_histogram(lab[..., c], lab_target[..., c]) for c in range(3)], axis=-1)
    matched_rgb = np.clip(cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB), 0.0, 1.0).astype(
        np.float64
    )
    original = frame.astype(np.float64) / 255.0
    blended = _set_lum(matched_rgb, _lum(original))
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)
