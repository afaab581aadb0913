"""`RayOptions`: where and how a job runs on a Ray cluster, and the `rerender run` flags that set them.

Every number is checked here, with a message that names its flag; what is left unset (None) is derived
from the cluster's resources once connected (`session.plan_resources`) and printed at the start of the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import option_ranges as ranges
from ..errors import UsageError

MAX_GPUS_PER_KEYFRAME = 8.0
MAX_CPUS_PER_GAP = 256.0
MAX_GAPS_IN_FLIGHT = 1024
MAX_ADDRESS_LENGTH = 512
AUTO = "auto"


@dataclass(frozen=True)
class RayOptions:
    """`address`: "auto" connects to the cluster this machine belongs to (`ray start`, RAY_ADDRESS) or,
    when there is none, starts a local one; otherwise a Ray address (host:port or ray://host:port).
    `gpus_per_keyframe`: GPUs each keyframe actor holds (None: 1 where the cluster has GPUs, else 0).
    `cpus_per_gap`: CPUs each propagation task holds (None: 2, one per chain). `gpus_per_gap`: GPUs each
    propagation task holds when the synthesis runs on CUDA (None: a quarter where the cluster has GPUs,
    else 0; tasks of the CPU synthesizer hold none). `max_gaps`: gaps in flight
    at once (None: enough to keep every CPU of the cluster busy, at least 2). `keep_models`: the keyframe
    actors outlive the job, so the next job on the cluster finds its model loaded (the watch daemon)."""

    address: str = AUTO
    gpus_per_keyframe: float | None = None
    cpus_per_gap: float | None = None
    gpus_per_gap: float | None = None
    max_gaps: int | None = None
    keep_models: bool = False

    def __post_init__(self) -> None:
        a = self.address
        if not isinstance(a, str) or (a != AUTO and _endpoint(a) is None):
            raise UsageError(
                "--ray expects 'auto' or a Ray address HOST:PORT or ray://HOST:PORT (port 1 to 65535, at "
                f"most {MAX_ADDRESS_LENGTH} characters), e.g. 10.0.0.5:6379; got {a!r}"
            )
        _check_number(self.gpus_per_keyframe, "--ray-gpus-per-keyframe", 0.0, MAX_GPUS_PER_KEYFRAME, False)
        _check_number(self.cpus_per_gap, "--ray-cpus-per-gap", 0.0, MAX_CPUS_PER_GAP, True)
        _check_number(self.gpus_per_gap, "--ray-gpus-per-gap", 0.0, MAX_GPUS_PER_KEYFRAME, False)
        m = self.max_gaps
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_GAPS_IN_FLIGHT
        ):
            raise UsageError(
                f"--ray-max-gaps expects a whole number from 1 to {MAX_GAPS_IN_FLIGHT}; got {m!r}"
            )

    def endpoint(self) -> tuple[str, int]:
        """(host, port) of an explicit address (not for 'auto')."""
        found = _endpoint(self.address)
        if found is None:
            raise ValueError(f"{self.address!r} names no host and port")
        return found


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT or ray://HOST:PORT ([v6]:PORT too), or None."""
    if (
        not address
        or len(address) > MAX_ADDRESS_LENGTH
        or any(c.isspace() or not c.isprintable() for c in address)
    ):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or "/" in host or "@" in host or not port.isdigit() or not port.isascii():
        return None
    number = int(port)
    return (host, number) if 1 <= number <= 65535 else None


def _check_number(value: Any, flag: str, low: float, high: float, low_open: bool) -> None:
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise UsageError(f"{flag} expects a number in {bracket}{low:g}, {high:g}]; got {value!r}")


def declare_ray_flags(p: Any) -> None:
    """Declare the Ray flags on a flag schema (`run_flags.FlagSchema`) or an argparse parser."""
    g = p.add_argument_group("many machines (Ray)")
    g.add_argument(
        "--ray",
        nargs="?",
        const=AUTO,
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster: keyframes on actors that keep the model loaded, gaps as tasks; ADDRESS "
        "is host:port, or auto (the default when --ray is given alone) to connect to this machine's "
        "cluster or start a local one (needs pip install 'rerender[ray]')",
    )
    g.add_argument(
        "--ray-gpus-per-keyframe",
        type=ranges.float_range(0, MAX_GPUS_PER_KEYFRAME),
        default=None,
        metavar="N",
        help=f"GPUs each keyframe actor holds, 0 to {MAX_GPUS_PER_KEYFRAME:g} (default: 1 when the cluster "
        "has GPUs, else 0)",
    )
    g.add_argument(
        "--ray-cpus-per-gap",
        type=ranges.float_range(0, MAX_CPUS_PER_GAP, low_open=True),
        default=None,
        metavar="N",
        help=f"CPUs each propagation task holds, (0, {MAX_CPUS_PER_GAP:g}] (default: 2, one per chain)",
    )
    g.add_argument(
        "--ray-gpus-per-gap",
        type=ranges.float_range(0, MAX_GPUS_PER_KEYFRAME),
        default=None,
        metavar="N",
        help=f"GPUs each propagation task holds when the synthesis runs on CUDA, 0 to "
        f"{MAX_GPUS_PER_KEYFRAME:g} (default: 0.25 when the cluster has GPUs, else 0)",
    )
    g.add_argument(
        "--ray-max-gaps",
        type=ranges.int_range(1, MAX_GAPS_IN_FLIGHT),
        default=None,
        metavar="N",
        help=f"gaps propagating at once, 1 to {MAX_GAPS_IN_FLIGHT}; bounds the driver's memory (default: "
        "enough for every CPU of the cluster)",
    )
    g.add_argument(
        "--ray-keep-models",
        action="store_true",
        help="the keyframe actors stay up with their model loaded after the job, for the next job on the "
        "cluster (rerender watch --ray sets it; `ray stop` ends them; default: they end with the job)",
    )


RAY_FLAGS = (
    "--ray",
    "--ray-gpus-per-keyframe",
    "--ray-cpus-per-gap",
    "--ray-gpus-per-gap",
    "--ray-max-gaps",
    "--ray-keep-models",
)


def ray_options_from_args(args: Any) -> RayOptions | None:
    """The parsed flags' RayOptions (None without --ray); fails in one line when ray is not installed."""
    if args.ray is None:
        given = (
            args.ray_gpus_per_keyframe,
            args.ray_cpus_per_gap,
            args.ray_gpus_per_gap,
            args.ray_max_gaps,
            args.ray_keep_models or None,
        )
        extra = [flag for flag, value in zip(RAY_FLAGS[1:], given, strict=True) if value is not None]
        if extra:
            raise UsageError(f"{extra[0]} is used with --ray only; add --ray [ADDRESS] or drop it")
        return None
    from .session import require_ray

    require_ray()
    return RayOptions(
        address=args.ray,
        gpus_per_keyframe=args.ray_gpus_per_keyframe,
        cpus_per_gap=args.ray_cpus_per_gap,
        gpus_per_gap=args.ray_gpus_per_gap,
        max_gaps=args.ray_max_gaps,
        keep_models=args.ray_keep_models,
    )
