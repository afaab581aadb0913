"""The latent- and pixel-space constraint formulas of Rerender A Video (docs/method.md §2.2–§2.6).

Pure tensor functions: no networks, no state. Images are (1, 3, H, W) in [-1, 1]; latents (1, 4, h, w);
occlusion maps (1, 1, H, W) with 1 = occluded; flows (1, 2, H, W) in pixels, (dx, dy), backward (for each
current-frame pixel, its offset into the reference frame).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLUR_KERNEL = 9  # method §2.2/§2.3: Gaussian 9×9, σ = 18, after a 9×9 max-pool dilation
BLUR_SIGMA = 18.0
DILATION = 9
LATENT_FACTOR = 8
ADAIN_EPS = 1e-5


# --- masks ------------------------------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    half = (kernel - 1) / 2
    taps = torch.exp(-((torch.arange(kernel, dtype=x.dtype, device=x.device) - half) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    channels = x.shape[1]
    x = F.pad(x, (kernel // 2,) * 4, mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, kernel).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, kernel, 1).repeat(channels, 1, 1, 1), groups=channels)


def soft_mask(occluded: torch.Tensor) -> torch.Tensor:
    """bm = clamp(G(maxpool9(occ)) + occ, 0, 1): a soft dilation of an occlusion map (method §2.2, §2.3 step 1)."""
    dilated = F.max_pool2d(occluded, DILATION, stride=1, padding=DILATION // 2)
    return (gaussian_blur(dilated) + occluded).clamp(0.0, 1.0)


def latent_max_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, LATENT_FACTOR, stride=LATENT_FACTOR)


def shape_fusion_mask(occluded_anchor: torch.Tensor) -> torch.Tensor:
    """method §2.2: M = 1 − maxpool8(bm_0) at latent size; 1 far from occlusions, 0 on occluded blocks."""
    return 1.0 - latent_max_pool(soft_mask(occluded_anchor))


def pixel_fusion_mask(occluded_previous: torch.Tensor, occluded_anchor: torch.Tensor) -> torch.Tensor:
    """method §2.3 step 4: Mp = 1 − maxpool8(1 − V), V = 1 − soft_mask(pixels both warps miss)."""
    both = 1.0 - ((1.0 - occluded_previous) + (1.0 - occluded_anchor)).clamp(0.0, 1.0)
    valid = 1.0 - soft_mask(both)
    return 1.0 - latent_max_pool(1.0 - valid)


def noise_rescale(mask: torch.Tensor) -> torch.Tensor:
    """method §2.3 step 6 (smooth boundary): R = 1 where both 3×3 finite-difference gradients of Mp are 0, else 0."""
    kx = torch.tensor([[-1.0, 0.0, 1.0]] * 3, dtype=mask.dtype, device=mask.device)
    padded = F.pad(mask, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx.view(1, 1, 3, 3))
    gy = F.conv2d(padded, kx.t().contiguous().view(1, 1, 3, 3))
    return ((gx == 0) & (gy == 0)).to(mask.dtype)


# --- warping ----------------------------------------------------------------------------------------------------


def _sample_grid(flow: torch.Tensor) -> torch.Tensor:
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype, device=flow.device),
        torch.arange(w, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    x = (xs + flow[:, 0]) / max(w - 1, 1) * 2 - 1
    y = (ys + flow[:, 1]) / max(h - 1, 1) * 2 - 1
    return torch.stack([x, y], dim=-1)


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward warp: sample `image` at p + flow(p) (align_corners=True, zeros outside; method §3)."""
    grid = _sample_grid(flow.to(image.dtype))
    return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=True)


def latent_flow(flow: torch.Tensor) -> torch.Tensor:
    """method §2.2: bilinear downsample by 1/8 of the pixel flow, divided by 8 (latent pixels)."""
    _, _, h, w = flow.shape
    small = F.interpolate(
        flow, size=(h // LATENT_FACTOR, w // LATENT_FACTOR), mode="bilinear", align_corners=False
    )
    return small / LATENT_FACTOR


# --- the four constraints -------------------------------------------------------------------------------------


def channel_stats(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """method §2.6: per-channel mean and std over H×W of the anchor's x̂0 (unbiased variance + 1e-5, square-rooted)."""
    mean = x0.mean(dim=(2, 3), keepdim=True)
    std = (x0.var(dim=(2, 3), keepdim=True, unbiased=True) + ADAIN_EPS).sqrt()
    return mean, std


def adain(x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """method §2.6: x̂0 ← InstanceNorm(x̂0)·std_anchor + mean_anchor (InstanceNorm: biased variance, eps 1e-5)."""
    normalised = F.instance_norm(x0, eps=ADAIN_EPS)
    return normalised * std + mean


def shape_fusion(
    x0: torch.Tensor, anchor_x0: torch.Tensor, flow_lat: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """method §2.2: x̂0 ← M · warp_nearest(x̂0_anchor, flow/8) + (1 − M) · x̂0."""
    return mask * warp(anchor_x0, flow_lat, mode="nearest") + (1.0 - mask) * x0


def composite(
    direct: torch.Tensor,
    warped_previous: torch.Tensor,
    soft_previous: torch.Tensor,
    warped_anchor: torch.Tensor,
    soft_anchor: torch.Tensor,
) -> torch.Tensor:
    """method §2.3 step 3: anchor warp over previous-keyframe warp over the fresh (pass-1) generation."""
    blended = (1.0 - soft_previous) * warped_previous + soft_previous * direct
    return (1.0 - soft_anchor) * warped_anchor + soft_anchor * blended


def fidelity_target(
    z: torch.Tensor, z_rec: torch.Tensor, image: torch.Tensor, corrected_image: torch.Tensor, threshold: float
) -> torch.Tensor:
    """method §2.4: x_trg = z + (1 − Mε)·(z − z_rec), λ = 1.

    Mε marks latent pixels near where the compensated decode D(z') strays from the target image by more than
    `threshold` (mean over RGB in [-1, 1]): bilinear ↓8, > 0, then a 3×3 max-pool dilation.
    """
    error = ((corrected_image - image).abs().mean(dim=1, keepdim=True) > threshold).to(z.dtype)
    small = F.interpolate(error, size=z.shape[-2:], mode="bilinear", align_corners=False) > 0
    overshoot = F.max_pool2d(small.to(z.dtype), 3, stride=1, padding=1)
    return z + (1.0 - overshoot) * (z - z_rec)


def pixel_fusion_step(
    x: torch.Tensor,
    direction: torch.Tensor,
    x_ref: torch.Tensor,
    weight: torch.Tensor,
    inner_strength: float,
    rescale: torch.Tensor | None,
) -> torch.Tensor:
    """method §2.3 update at the start of a step: x ← w·x_ref + (1 − w)·(x − dir) + r·dir.

    r = max(1 − w, √(1 − w²)·inner_strength), and with smooth boundaries r ← (1 − w)(1 − R) + r·R.
    `direction` is the previous step's √(1 − ᾱ_t)·ε̂, so x − dir = √ᾱ_t·x̂0.
    """
    r = torch.maximum(1.0 - weight, torch.sqrt(1.0 - weight**2) * inner_strength)
    if rescale is not None:
        r = (1.0 - weight) * (1.0 - rescale) + r * rescale
    return weight * x_ref + (1.0 - weight) * (x - direction) + r * direction


def q_sample(x0: torch.Tensor, alpha_bar: float, noise: torch.Tensor) -> torch.Tensor:
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise
