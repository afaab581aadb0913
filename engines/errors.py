"""The exceptions of the package, defined in the lowest layer that raises them.

`RerenderError` is the base every layer shares: its message is one sentence that says what was expected and
how to fix it, and `exit_status` is what the command line exits with (filter/cli.py prints the sentence on
one line, never a traceback). `UsageError` (a wrong option or an impossible value) and `InputError` (input
that cannot be used) are the two kinds of bad request, both exit status 2; the filter raises them as they
are (re-exported by filter/errors.py).

The runtime raises its own subclasses of those two, so a caller can tell a runtime refusal from a filter
one while every `except UsageError`/`except InputError`/`except RerenderError` still catches it:
`ModelFileError` for a model, weights, tokenizer, scheduler or control file the runtime cannot use, and
`EngineUsageError` for a runtime choice (backend, device, flow estimator, control kind) that cannot be
served as asked.
"""


class RerenderError(Exception):
    """Base class: the message is one sentence that says what was expected and how to fix it."""

    exit_status = 1


class UsageError(RerenderError):
    """A wrong flag or an impossible value (exit status 2)."""

    exit_status = 2


class InputError(RerenderError):
    """Bad input media or a missing/unusable model file (exit status 2)."""

    exit_status = 2


class ModelFileError(InputError):
    """The runtime cannot use a model, weights, tokenizer, scheduler or control file (exit status 2)."""


class EngineUsageError(UsageError):
    """The runtime cannot serve a backend, device, flow estimator or control as asked (exit status 2)."""


class BackendUnavailable(RuntimeError):
    """A backend cannot serve on this machine or with these files; the message says why. Not a request
    error by itself: engines/select.py turns it into an `EngineUsageError` when that backend was asked for,
    and moves on to the next backend under `--backend auto`."""
