"""RAFT optical flow (Teed & Deng 2020) through torchvision's model definition, weights from a user path.

`--flow raft:WEIGHTS` (docs/decisions.md, decision 8). Implements `engines.flow.FlowEstimator`: `estimate(image,
reference)` returns, for every pixel p of `image`, the offset f(p) with image(p) ~ reference(p + f(p)).
torchvision is imported only when an estimator is built, so the package imports without it; the weights
(torchvision's `raft_large`/`raft_small` state dicts, .pth or .safetensors) are read tensor-only
by content (`engines/loading.read_checkpoint`: safetensors by its header, else `torch.load(weights_only=True)`,
which runs no code), and large vs small is told from their shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EngineUsageError, ModelFileError

PAD_MULTIPLE = 8
ITERATIONS = 12


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from .loading import read_checkpoint

    # Decided by content (engines/checkpoint.py): safetensors by its header, else torch's tensor-only loader;
    # a file that needs code to load is refused, and --allow-pickle is not offered for flow weights.
    return read_checkpoint(path, allow_pickle=False, flag_owner="--flow raft:", allow_pickle_offered=False)


class RAFTFlow:
    def __init__(self, weights: Path, device: torch.device | str = "cpu", iterations: int = ITERATIONS):
        try:
            from torchvision.models.optical_flow import raft_large, raft_small
        except ImportError as error:
            raise EngineUsageError(
                f"--flow raft needs torchvision, which is not installed ({error}); use --flow dis"
            ) from None
        state = _read_state(weights)
        stem = state.get("feature_encoder.convnormrelu.0.weight")
        if stem is None:
            raise ModelFileError(
                f"--flow raft:{weights} has no feature_encoder weights; is it a torchvision RAFT file?"
            )
        model = raft_small() if stem.shape[0] == 32 else raft_large()
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ModelFileError(f"--flow raft:{weights} does not fit torchvision's RAFT ({error})") from None
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.iterations = iterations
        self.name = f"raft:{weights.name}"

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        return (x / 127.5 - 1.0).to(self.device)  # torchvision's RAFT transforms: [-1, 1]

    @torch.no_grad()
    def estimate(self, image: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if image.shape != reference.shape:
            raise ValueError(f"flow needs two images of one size; got {image.shape} and {reference.shape}")
        h, w = image.shape[:2]
        pad_h, pad_w = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
        pad = (0, pad_w, 0, pad_h)
        a = F.pad(self._tensor(image), pad, mode="replicate")
        b = F.pad(self._tensor(reference), pad, mode="replicate")
        flow = self.model(a, b, num_flow_updates=self.iterations)[-1]
        return flow[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32)


def make_estimator(arg: str | None) -> RAFTFlow:
    """`--flow raft:WEIGHTS`."""
    if not arg:
        raise EngineUsageError("--flow raft needs the weights' path: --flow raft:/path/to/raft_large.pth")
    return RAFTFlow(Path(arg))
