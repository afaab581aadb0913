"""Guided patch synthesis (the EbSynth algorithm, Jamriška et al. 2019): one search-vote schedule (csrc/synth_driver.h)
run by a C++/OpenMP CPU executor or by the CUDA kernels, plus the temporal-aware blending of forward and
backward propagations (Rerender-A-Video, Yang et al. 2023)."""

from rerender.native.backends import available_backends
from rerender.native.params import PRESETS, Guide, SynthParams, SynthResult
from rerender.native.synthesize import Synthesizer, make_synthesizer, synthesize

__all__ = [
    "PRESETS",
    "Guide",
    "SynthParams",
    "SynthResult",
    "Synthesizer",
    "available_backends",
    "make_synthesizer",
    "synthesize",
]
