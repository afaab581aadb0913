"""FreeU (docs/method.md §2.7) as forward pre-hooks on the UNet's up-block resnets.

The reference applies FreeU on each UNet *output block's input*: the backbone feature h, just before it is
concatenated with the skip feature. In diffusers' up blocks every resnet receives `torch.cat([h, skip], dim=1)`,
so a forward pre-hook on each resnet sees exactly that concatenation; the split point (h's channel count) is
recorded at installation by walking `unet.up_blocks` in execution order (h of a block's first resnet is the
previous block's output, or the mid block's; h of the others is the preceding resnet's output). No module's
`forward` is reassigned.

Only the UNet's own skip feature is Fourier-filtered; a ControlNet residual is added to it afterwards
(method §2.7, as the authors' UNet forward does). diffusers adds the residuals to the skips before the
up blocks, so what a resnet receives is skip + residual: a forward pre-hook on the UNet keeps the call's
`down_block_additional_residuals` for the resnet hooks, which filter (skip + residual) − residual and add the
residual back (in float32). Without residuals the skip is filtered as it arrives.

Which blocks are scaled (the reference keys on channel count, not on block index):
- h with the widest backbone width (the largest of `block_out_channels`; 1280 in SD1.5, output blocks 0–6):
  the first half of h's channels (640) is multiplied by 1 + (b1 − 1)·m̂ and the skip is Fourier-filtered with s1;
- h with the second-largest distinct width (640 in SD1.5, output blocks 7–9): the first half (320) uses b2, the
  skip s2;
- every other block is untouched.
For SD1.5 this is literally the reference's 1280/640 rule; for other configs it is the same rule by rank.

m̂ is the channel-mean map of h, min-max normalised per sample to [0, 1]. Where a sample's map is constant
(e.g. a 1×1 feature map at the lowest level of a tiny latent) the reference divides 0 by 0; here m̂ is 0 there
(no backbone boost) instead of NaN. A factor of exactly 1 skips its operation, so (1, 1, 1, 1) is the identity
bit for bit (the FFT round trip would otherwise add float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class FreeUFactors:
    """`--freeu B1,B2,S1,S2`: backbone factors b1, b2 and skip factors s1, s2 (method §2.7)."""

    b1: float
    b2: float
    s1: float
    s2: float

    @classmethod
    def from_tuple(cls, values: tuple[float, float, float, float]) -> FreeUFactors:
        if len(values) != 4:
            raise ValueError(f"FreeU takes four factors B1,B2,S1,S2; got {len(values)}")
        b1, b2, s1, s2 = (float(v) for v in values)
        return cls(b1=b1, b2=b2, s1=s1, s2=s2)


@dataclass(frozen=True)
class FreeUSite:
    """One up-block resnet whose input is `cat([h, skip])`: where the split is and which factors apply."""

    output_block: int  # the LDM `output_blocks` index the reference counts in (0–11 for SD1.5)
    up_block: int
    resnet: int
    backbone_channels: int
    skip_channels: int
    level: int | None  # 1 = b1/s1 (widest h), 2 = b2/s2 (second widest), None = untouched
    skip_index: int = 0  # which of diffusers' down-block outputs (and ControlNet residuals) is the skip


def backbone_scale(h: torch.Tensor, b: float) -> torch.Tensor:
    """Multiply the first half of h's channels by 1 + (b − 1)·m̂ (method §2.7, structure-aware scaling)."""
    mean = h.mean(dim=1, keepdim=True)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    spread = high - low
    # A constant map has no structure to emphasise: m̂ = 0 there (the reference would produce 0/0 = NaN).
    normalised = torch.where(spread > 0, (mean - low) / torch.where(spread > 0, spread, 1), 0)
    half = h.shape[1] // 2
    scaled = h[:, :half] * ((b - 1) * normalised + 1)
    return torch.cat([scaled, h[:, half:]], dim=1)


def fourier_filter(x: torch.Tensor, scale: float, half_width: int = 1) -> torch.Tensor:
    """Scale the centred low-frequency square of half-width `half_width` by `scale` (method §2.7).

    Centred 2-D FFT, the square [c − w, c + w) on both axes (2×2 for w = 1) multiplied by `scale`, inverse FFT,
    real part. Computed in float32 (torch's half-precision FFT needs power-of-two sizes), returned in x's dtype.
    """
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = x.shape[-2:]
    row, col = height // 2, width // 2
    # Slices start at 0 for a 1-pixel axis (row − w = −1), as the reference's Python slice does.
    rows = slice(max(row - half_width, 0), row + half_width)
    cols = slice(max(col - half_width, 0), col + half_width)
    mask = torch.ones_like(freq.real)
    mask[..., rows, cols] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


class _CallResiduals:
    """The ControlNet skip residuals of the UNet call in progress (None outside a call or without any).

    One per installation: the UNet's forward pre-hook sets it, its forward hook clears it, and the resnet
    hooks read the entry of their skip while the call runs."""

    def __init__(self) -> None:
        self.residuals: tuple[torch.Tensor, ...] | None = None
        self.handles: list[RemovableHandle] = []

    def start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        residuals = kwargs.get("down_block_additional_residuals")
        self.residuals = tuple(residuals) if residuals is not None else None

    def finish(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        self.residuals = None

    def skip_residual(self, index: int) -> torch.Tensor | None:
        if self.residuals is None:
            return None
        return self.residuals[index]


def filter_own_skip(skip: torch.Tensor, residual: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Fourier-filter the UNet's own skip feature and add the ControlNet residual after the filter.

    `skip` is what diffusers hands the up block: the UNet's skip plus `residual` (or the bare skip when
    `residual` is None)."""
    if residual is None:
        return fourier_filter(skip, scale)
    own = skip.float() - residual.float()
    return (fourier_filter(own, scale) + residual.float()).to(skip.dtype)


class _FreeUPreHook:
    """Forward pre-hook of one resnet: split its input into h and skip, apply method §2.7, concatenate again."""

    def __init__(
        self, backbone_channels: int, b: float, s: float, skip_index: int, call: _CallResiduals | None = None
    ):
        self.backbone_channels = backbone_channels
        self.b = b
        self.s = s
        self.skip_index = skip_index  # position of this resnet's skip in diffusers' down-block outputs
        self.call = call
        self.handle: RemovableHandle | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        from_kwargs = not args
        hidden = kwargs["input_tensor"] if from_kwargs else args[0]
        h, skip = hidden[:, : self.backbone_channels], hidden[:, self.backbone_channels :]
        if self.b != 1:
            h = backbone_scale(h, self.b)
        if self.s != 1:
            residual = self.call.skip_residual(self.skip_index) if self.call is not None else None
            skip = filter_own_skip(skip, residual, self.s)
        hidden = torch.cat([h, skip], dim=1)
        if from_kwargs:
            return args, {**kwargs, "input_tensor": hidden}
        return (hidden, *args[1:]), kwargs


def freeu_sites(unet: nn.Module) -> tuple[FreeUSite, ...]:
    """Every up-block resnet in execution order, with its h/skip split and its FreeU level (module docstring)."""
    widths = sorted(set(unet.config.block_out_channels), reverse=True)
    levels = {width: rank + 1 for rank, width in enumerate(widths[:2])}
    mid = getattr(unet, "mid_block", None)
    previous = mid.resnets[-1].out_channels if mid is not None else unet.config.block_out_channels[-1]
    sites = []
    for block_index, block in enumerate(unet.up_blocks):
        for resnet_index, resnet in enumerate(block.resnets):
            skip = resnet.in_channels - previous
            if skip <= 0:
                raise ValueError(
                    f"up block {block_index} resnet {resnet_index} takes {resnet.in_channels} channels after a "
                    f"{previous}-channel feature, so it has no skip input; FreeU needs an SD-style UNet"
                )
            sites.append(
                FreeUSite(
                    output_block=len(sites),
                    up_block=block_index,
                    resnet=resnet_index,
                    backbone_channels=previous,
                    skip_channels=skip,
                    level=levels.get(previous),
                )
            )
            previous = resnet.out_channels  # upsamplers keep the channel count
    # The up blocks take the down-block outputs last first: output block j takes skip n − 1 − j.
    return tuple(replace(site, skip_index=len(sites) - 1 - site.output_block) for site in sites)


@dataclass(frozen=True)
class FreeUHooks:
    """The installed hooks; `remove()` restores the stock UNet."""

    factors: FreeUFactors
    handles: tuple[RemovableHandle, ...]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def install_freeu(unet: nn.Module, factors: FreeUFactors) -> FreeUHooks:
    """Register FreeU pre-hooks on `unet`'s up-block resnets; call `.remove()` on the result to undo.

    Raises if FreeU hooks are already installed on this UNet (remove those first, or use `set_freeu`).
    """
    if _call_hooks(unet) or any(_installed(resnet) for block in unet.up_blocks for resnet in block.resnets):
        raise ValueError("FreeU is already installed on this UNet; remove the previous hooks first")
    if any(getattr(block, "b1", None) is not None for block in unet.up_blocks):
        raise ValueError("diffusers' own FreeU is enabled on this UNet; call unet.disable_freeu() first")
    by_level = {1: (factors.b1, factors.s1), 2: (factors.b2, factors.s2)}
    call = _CallResiduals()
    handles = [
        unet.register_forward_pre_hook(call.start, with_kwargs=True),
        unet.register_forward_hook(call.finish, with_kwargs=True, always_call=True),
    ]
    call.handles = list(handles)
    for site in freeu_sites(unet):
        if site.level is None:
            continue
        b, s = by_level[site.level]
        resnet = unet.up_blocks[site.up_block].resnets[site.resnet]
        hook = _FreeUPreHook(site.backbone_channels, b, s, site.skip_index, call)
        hook.handle = resnet.register_forward_pre_hook(hook, with_kwargs=True)
        handles.append(hook.handle)
    return FreeUHooks(factors, tuple(handles))


def _freeu_hooks(resnet: nn.Module) -> list[_FreeUPreHook]:
    # torch has no public listing of a module's hooks; only reading the dict, removal uses the handles.
    return [hook for hook in resnet._forward_pre_hooks.values() if isinstance(hook, _FreeUPreHook)]


def _call_hooks(unet: nn.Module) -> list[_CallResiduals]:
    hooks = [*unet._forward_pre_hooks.values(), *unet._forward_hooks.values()]
    return [h.__self__ for h in hooks if isinstance(getattr(h, "__self__", None), _CallResiduals)]


def _installed(resnet: nn.Module) -> bool:
    return bool(_freeu_hooks(resnet))


def remove_freeu(unet: nn.Module) -> None:
    """Remove any FreeU pre-hooks from `unet` (for callers that no longer hold the `FreeUHooks`)."""
    for block in unet.up_blocks:
        for resnet in block.resnets:
            for hook in _freeu_hooks(resnet):
                if hook.handle is not None:
                    hook.handle.remove()
    for call in _call_hooks(unet):
        for handle in call.handles:
            handle.remove()


def set_freeu(unet: nn.Module, factors: FreeUFactors | None) -> FreeUHooks | None:
    """Make `unet`'s FreeU exactly `factors` (None = off), replacing whatever FreeU was installed before."""
    remove_freeu(unet)
    return None if factors is None else install_freeu(unet, factors)
