"""Exceptions that the command line turns into one-line messages and exit statuses."""


class RerenderError(Exception):
    """Base class: the message is one sentence that says what was expected and how to fix it."""

    exit_status = 1


class UsageError(RerenderError):
    """A wrong flag or an impossible value (exit status 2)."""

    exit_status = 2


class InputError(RerenderError):
    """Bad input media or a missing/unusable model file (exit status 2)."""

    exit_status = 2
