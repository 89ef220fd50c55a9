"""The deploykit error tree. Every error carries the exit code the CLI exits with.

::

    DeploykitError                 (base; never raised directly)
    ├── UnsafeError           1    a finding that should stop a deploy
    ├── UsageError            2    bad flag, bad value, corrupt file, app that fails to import
    ├── TimedOut              3    a wait ran out of time with work still in flight
    ├── Refused               4    a precondition or budget forbids the action
    ├── Incomplete            5    some of what should be checked could not be read (never "OK")
    ├── Unavailable          69    broker, management API or required workers unreachable
    └── Interrupted         130    Ctrl-C / SIGTERM

    (70: internal error, a deploykit bug: any exception that is not a DeploykitError.)

Library exceptions (redis, amqp, httpx, kombu) are translated into these at the broker boundary
(``deploykit/brokers``, ``deploykit/fleet``); anything else reaching the CLI is a bug.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes documented in the README, the same for every command."""

    OK = 0
    UNSAFE = 1
    USAGE = 2
    TIMEOUT = 3
    REFUSED = 4
    INCOMPLETE = 5
    UNAVAILABLE = 69
    INTERNAL = 70
    INTERRUPTED = 130


class DeploykitError(Exception):
    """Base class: a one-line message for stderr plus an exit code."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsafeError(DeploykitError):
    exit_code = ExitCode.UNSAFE


class UsageError(DeploykitError):
    exit_code = ExitCode.USAGE


class TimedOut(DeploykitError):
    exit_code = ExitCode.TIMEOUT


class Refused(DeploykitError):
    exit_code = ExitCode.REFUSED


class Incomplete(DeploykitError):
    exit_code = ExitCode.INCOMPLETE


class Unavailable(DeploykitError):
    exit_code = ExitCode.UNAVAILABLE


class Interrupted(DeploykitError):
    exit_code = ExitCode.INTERRUPTED
