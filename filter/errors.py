"""Exceptions that the command line turns into one-line messages and exit statuses.

They are defined in engines/errors.py, the lowest layer that raises them (layers point down only:
native <- engines <- export <- filter), so the runtime's own errors (`ModelFileError`, `EngineUsageError`)
are `InputError`s and `UsageError`s here too; filter code raises `UsageError` and `InputError`.
"""

from ..engines.errors import EngineUsageError, InputError, ModelFileError, RerenderError, UsageError

__all__ = ["EngineUsageError", "InputError", "ModelFileError", "RerenderError", "UsageError"]
