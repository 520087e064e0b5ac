"""Exception types of bpgpu.

Every error a user can cause (a bad shape, a corrupt file, a backend that cannot run here) is one of
these, so the CLI can print one line and exit with status 2 instead of a traceback, and library users
can catch exactly what they expect.
"""

import argparse

__all__ = ["BpgpuError", "BackendUnavailable", "DataError", "ConfigError", "ModelFileError",
           "UsageError", "USER_ERRORS"]


class BpgpuError(Exception):
    """Base class of every error bpgpu raises on purpose."""


class BackendUnavailable(BpgpuError):
    """A backend was requested that cannot run on this machine (missing library, no GPU, ...)."""


class DataError(BpgpuError, ValueError):
    """Input data is unusable: wrong shape, NaN, labels out of range, a corrupt or truncated file."""


class ConfigError(BpgpuError, ValueError):
    """An invalid model or training configuration (unknown activation, ``ce`` without softmax, ...)."""


class ModelFileError(BpgpuError):
    """A saved model file is truncated, foreign, or of an unknown format version."""


class UsageError(BpgpuError):
    """Bad command-line usage (reported like any other error: one line, exit 2)."""


#: What ``bpgpu`` reports as one line and exit status 2 (no traceback): bpgpu's own errors, an
#: operating-system error on a file, and argparse's (a bad value caught outside the parser).
USER_ERRORS = (BpgpuError, OSError, argparse.ArgumentError, argparse.ArgumentTypeError)
