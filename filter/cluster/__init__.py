"""Scale-out on a Ray cluster (`rerender run --ray`, `rerender watch --ray`): keyframes on actors that
keep the model loaded, gaps as tasks, output written in order on the driver (docs/scale-out.md).

Only `options` is imported by the rest of rerender without --ray; it imports no Ray. `ray` is imported
lazily by `session.require_ray`, with a one-line error naming `pip install 'rerender[ray]'`.
"""

from .options import RayOptions, declare_ray_flags, ray_options_from_args

__all__ = ["RayOptions", "declare_ray_flags", "ray_options_from_args"]
