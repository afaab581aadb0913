"""Keyframe renderers: one interface, `render(frame, context) -> image` (classic, frames, diffusion)."""
