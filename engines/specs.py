"""One I/O spec per exported network (README).

A `NetworkSpec` names every input and output, its dtype and its shape, where each dimension is either a
fixed size or a `Dim` derived from the batch and the image height/width. The same spec drives
- the ONNX export (input/output names, `dynamic_axes`, example inputs),
- the TensorRT optimisation profile (min/opt/max shapes from a `SizeRange`),
- buffer allocation in the backends (concrete output shapes for a given batch and size).

Sizes are image pixels; latents are 1/8 of them. Height and width must be multiples of 64 so that every
down/up sampling stage of the SD1.5 UNet divides evenly: the traced graph then has no size-dependent
branch (diffusers' `forward_upsample_size` is False for every allowed size).

Importing this module needs neither torch nor onnx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

DType = Literal["float32", "float16", "int64", "int32", "bool"]
Precision = Literal["fp32", "fp16"]

SIZE_MULTIPLE = 64
TEXT_TOKENS = 77  # CLIP's context length for SD1.5 prompts


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension.

    kind "batch": the batch size. "height"/"width": image size // divisor. "tokens": the number of
    attention tokens of a feature map at image size // divisor, i.e. (H // d) * (W // d), times `factor`
    (2 for the reference states that concatenate anchor and previous keyframe, reference B.1).
    """

    kind: Literal["batch", "height", "width", "tokens"]
    divisor: int = 1
    factor: int = 1

    @property
    def name(self) -> str:
        if self.kind == "batch":
            return "B"
        prefix = {"height": "H", "width": "W", "tokens": "N"}[self.kind]
        return f"{prefix}{self.divisor}" + (f"x{self.factor}" if self.factor != 1 else "")

    def value(self, batch: int, height: int, width: int) -> int:
        if self.kind == "batch":
            return batch
        if self.kind == "height":
            return height // self.divisor
        if self.kind == "width":
            return width // self.divisor
        return (height // self.divisor) * (width // self.divisor) * self.factor


BATCH = Dim("batch")


@dataclass(frozen=True)
class TensorSpec:
    """`follows_precision`: a float tensor that is fp16 in fp16 graphs. The timestep stays fp32 (values up
    to 999 and the sinusoidal embedding are computed in fp32 by diffusers whatever the model dtype)."""

    name: str
    dtype: DType
    shape: tuple[int | Dim, ...]
    follows_precision: bool = True

    def concrete(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else d.value(batch, height, width) for d in self.shape)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d.name for i, d in enumerate(self.shape) if isinstance(d, Dim)}


@dataclass(frozen=True)
class SizeRange:
    """Image sizes (height, width) a graph or engine serves: min <= opt <= max, multiples of 64.

    The default covers the processing canvas that `rerender run`'s default `--size 512` gives the common
    video shapes (README, *Export*): 16:9 landscape 512x960, 9:16 portrait 960x512, 4:3 512x704, 3:4
    704x512, square 512x512, and smaller inputs down to a 256-pixel side. Height and width range separately
    (a TensorRT profile is per axis), so one export serves both orientations. TensorRT tunes its kernels
    for `opt`, the 16:9 landscape canvas."""

    min: tuple[int, int] = (256, 256)
    opt: tuple[int, int] = (512, 960)
    max: tuple[int, int] = (960, 960)

    def __post_init__(self) -> None:
        for label, (h, w) in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
                raise ValueError(
                    f"{label} size {h}x{w} must be positive multiples of {SIZE_MULTIPLE} "
                    "(the UNet halves the latent three times); round it, e.g. 512x768"
                )
        for i, axis in ((0, "height"), (1, "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise ValueError(
                    f"{axis}s must satisfy min <= opt <= max; got {self.min[i]}, {self.opt[i]}, {self.max[i]}"
                )

    def contains(self, height: int, width: int) -> bool:
        return self.min[0] <= height <= self.max[0] and self.min[1] <= width <= self.max[1]

    def misfit(self, height: int, width: int) -> str | None:
        """None when an image size is served, else the sentence that names the size, the range and the
        export flags that would cover both."""
        if self.contains(height, width):
            return None
        low = (min(self.min[0], height), min(self.min[1], width))
        high = (max(self.max[0], height), max(self.max[1], width))
        flags = []
        if low != self.min:
            flags.append(f"--min-size {low[0]}x{low[1]}")
        if high != self.max:
            flags.append(f"--max-size {high[0]}x{high[1]}")
        return (
            f"the processing canvas {height}x{width} (height x width) is outside the exported sizes "
            f"{self.min[0]}x{self.min[1]}..{self.max[0]}x{self.max[1]}; re-export with {' '.join(flags)}"
        )

    @property
    def tag(self) -> str:
        def hw(s: tuple[int, int]) -> str:
            return f"{s[0]}x{s[1]}"

        return f"{hw(self.min)}-{hw(self.opt)}-{hw(self.max)}"


@dataclass(frozen=True)
class BatchRange:
    min: int = 1
    opt: int = 2
    max: int = 2


@dataclass(frozen=True)
class NetworkSpec:
    """Inputs and outputs of one exported network, in call order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: BatchRange = BatchRange()

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}

    def input_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(batch, height, width) for t in self.inputs}

    def output_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(batch, height, width) for t in self.outputs}

    def infer_dims(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int, int]:
        """(batch, height, width) in image pixels from concrete input shapes (0 where no input has it)."""
        batch = height = width = 0
        for t in self.inputs:
            for dim, value in zip(t.shape, shapes[t.name], strict=True):
                if isinstance(dim, Dim):
                    if dim.kind == "batch":
                        batch = value
                    elif dim.kind == "height":
                        height = value * dim.divisor
                    elif dim.kind == "width":
                        width = value * dim.divisor
        return batch, height, width

    def profile(
        self, sizes: SizeRange
    ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: (min, opt, max) shape per input."""
        b = self.batch
        return {
            t.name: (
                t.concrete(b.min, *sizes.min),
                t.concrete(b.opt, *sizes.opt),
                t.concrete(b.max, *sizes.max),
            )
            for t in self.inputs
        }

    def with_dtype(self, precision: Precision) -> NetworkSpec:
        """The same spec with its float tensors in the graph precision (fp16 graphs take fp16 I/O)."""
        float_dtype: DType = "float16" if precision == "fp16" else "float32"

        def convert(t: TensorSpec) -> TensorSpec:
            if t.follows_precision and t.dtype in ("float32", "float16"):
                return TensorSpec(t.name, float_dtype, t.shape)
            return t

        return NetworkSpec(
            self.name,
            tuple(convert(t) for t in self.inputs),
            tuple(convert(t) for t in self.outputs),
            self.batch,
        )

    def check_feed(self, shapes: Mapping[str, tuple[int, ...]], sizes: SizeRange | None = None) -> None:
        """Raise a sentence when a feed does not match the spec (missing names, wrong fixed dims)."""
        missing = [n for n in self.input_names if n not in shapes]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}; expected {self.input_names}")
        for t in self.inputs:
            got = tuple(shapes[t.name])
            if len(got) != len(t.shape) or any(
                isinstance(d, int) and d != g for d, g in zip(t.shape, got, strict=False)
            ):
                raise ValueError(f"{self.name}: input {t.name} has shape {got}; the spec expects {t.shape}")


# Networks exported in fp32 whatever `--precision` says: the text encoder runs once per prompt, and
# transformers' CLIP traced in fp16 upcasts its residual stream, giving LayerNormalization nodes with mixed
# fp16/fp32 inputs that onnxruntime and strongly typed TensorRT reject.
FP32_ONLY = ("text_encoder",)


def network_precision(name: str, precision: Precision) -> Precision:
    return "fp32" if name in FP32_ONLY else precision


H8, W8 = Dim("height", 8), Dim("width", 8)


IMAGE = (BATCH, 3, Dim("height"), Dim("width"))
# Batch: 2 is classifier-free guidance (uncond + cond, docs/decisions.md 5); 1 serves single passes.
CFG_BATCH = BatchRange(1, 2, 2)
IMAGE_BATCH = BatchRange(1, 1, 2)


def text_encoder_spec(hidden_size: int = 768, tokens: int = TEXT_TOKENS) -> NetworkSpec:
    return NetworkSpec(
        "text_encoder",
        inputs=(TensorSpec("token_ids", "int64", (BATCH, tokens)),),
        outputs=(TensorSpec("embeddings", "float32", (BATCH, tokens, hidden_size)),),
        batch=CFG_BATCH,
    )


def vae_encoder_spec(latent_channels: int = 4) -> NetworkSpec:
    # Posterior moments (mean, log-variance), unscaled: drawing from them is the sampler's business, with
    # its own generator (engines/runtime.py), so every backend gives the same latent for the same seed.
    return NetworkSpec(
        "vae_encoder",
        inputs=(TensorSpec("image", "float32", IMAGE),),
        outputs=(TensorSpec("moments", "float32", (BATCH, 2 * latent_channels, H8, W8)),),
        batch=IMAGE_BATCH,
    )


def vae_decoder_spec(latent_channels: int = 4) -> NetworkSpec:
    return NetworkSpec(
        "vae_decoder",
        inputs=(TensorSpec("latent_sample", "float32", (BATCH, latent_channels, H8, W8)),),
        outputs=(TensorSpec("image", "float32", IMAGE),),
        batch=IMAGE_BATCH,
    )


def control_residual_layout(unet_config: Mapping) -> tuple[tuple[int, int], ...]:
    """(channels, latent stride) of every ControlNet down residual, in diffusers order.

    The conv_in output, then per down block `layers_per_block` resnet outputs and (except for the last
    block) the downsampler output: 12 residuals for SD1.5. Works for the tiny test configs as well.
    """
    channels = list(unet_config["block_out_channels"])
    per_block = unet_config["layers_per_block"]
    per_block = per_block if isinstance(per_block, int) else per_block[0]
    layout = [(channels[0], 1)]
    for i, c in enumerate(channels):
        layout += [(c, 2**i)] * per_block
        if i < len(channels) - 1:
            layout.append((c, 2 ** (i + 1)))
    return tuple(layout)


def mid_residual_layout(unet_config: Mapping) -> tuple[int, int]:
    channels = list(unet_config["block_out_channels"])
    return channels[-1], 2 ** (len(channels) - 1)


def _latent_map(name: str, channels: int, stride: int) -> TensorSpec:
    return TensorSpec(name, "float32", (BATCH, channels, Dim("height", 8 * stride), Dim("width", 8 * stride)))


def residual_names(unet_config: Mapping) -> tuple[list[str], str]:
    return [f"down_residual_{i}" for i in range(len(control_residual_layout(unet_config)))], "mid_residual"


def controlnet_spec(name: str, unet_config: Mapping, hidden_size: int) -> NetworkSpec:
    """A ControlNet (scale as an input, so changing `--controlnet PATH:SCALE` does not re-export)."""
    down_names, mid_name = residual_names(unet_config)
    latent_channels = unet_config.get("in_channels", 4)
    outputs = [
        _latent_map(n, c, s)
        for n, (c, s) in zip(down_names, control_residual_layout(unet_config), strict=True)
    ]
    outputs.append(_latent_map(mid_name, *mid_residual_layout(unet_config)))
    return NetworkSpec(
        name,
        inputs=(
            TensorSpec("sample", "float32", (BATCH, latent_channels, H8, W8)),
            TensorSpec("timestep", "float32", (BATCH,), follows_precision=False),
            TensorSpec("text_embeddings", "float32", (BATCH, TEXT_TOKENS, hidden_size)),
            TensorSpec("control_image", "float32", IMAGE),
            TensorSpec("conditioning_scale", "float32", (1,)),
        ),
        outputs=tuple(outputs),
        batch=CFG_BATCH,
    )


def unet_spec(unet_config: Mapping, layers: tuple, hidden_size: int) -> NetworkSpec:
    """The UNet with ControlNet residual inputs and cross-frame attention state inputs/outputs.

    `layers` are the up-block self-attention layers (`engines.runtime.up_self_attention_layers`: objects
    with `.channels` and `.stride`). Reference states hold [anchor; previous] tokens (2·N_l), own states N_l
    (docs/method.md §2.1); `reference_mask` (L,) switches each layer between cross-frame and plain
    self-attention by value, so one graph serves anchor, loose, full and off.
    """
    down_names, mid_name = residual_names(unet_config)
    latent_channels = unet_config.get("in_channels", 4)
    out_channels = unet_config.get("out_channels", latent_channels)
    inputs = [
        TensorSpec("sample", "float32", (BATCH, latent_channels, H8, W8)),
        TensorSpec("timestep", "float32", (BATCH,), follows_precision=False),
        TensorSpec("text_embeddings", "float32", (BATCH, TEXT_TOKENS, hidden_size)),
    ]
    inputs += [
        _latent_map(n, c, s)
        for n, (c, s) in zip(down_names, control_residual_layout(unet_config), strict=True)
    ]
    inputs.append(_latent_map(mid_name, *mid_residual_layout(unet_config)))
    inputs += [
        TensorSpec(
            f"reference_state_{i}", "float32", (BATCH, Dim("tokens", 8 * layer.stride, 2), layer.channels)
        )
        for i, layer in enumerate(layers)
    ]
    inputs.append(TensorSpec("reference_mask", "float32", (len(layers),), follows_precision=False))
    outputs = [TensorSpec("noise", "float32", (BATCH, out_channels, H8, W8))]
    outputs += [
        TensorSpec(f"own_state_{i}", "float32", (BATCH, Dim("tokens", 8 * layer.stride), layer.channels))
        for i, layer in enumerate(layers)
    ]
    return NetworkSpec("unet", tuple(inputs), tuple(outputs), batch=CFG_BATCH)
