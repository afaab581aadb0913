"""Guided patch synthesis (the EbSynth algorithm, ebsynth.md) with a C++/OpenMP CPU backend and a CUDA twin,
plus the temporal-aware blending of forward and backward propagations (rerender-reference.md §D.4)."""

from rerender.native.backends import available_backends
from rerender.native.params import PRESETS, Guide, SynthParams, SynthResult
from rerender.native.synthesize import synthesize

__all__ = ["PRESETS", "Guide", "SynthParams", "SynthResult", "available_backends", "synthesize"]
