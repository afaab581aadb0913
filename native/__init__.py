"""Guided patch synthesis (the EbSynth algorithm) with a C++/OpenMP CPU backend and a CUDA twin."""
