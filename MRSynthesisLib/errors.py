"""Error types that front ends map to exit codes and messages.

The split matters to users: an ``InputError`` is something *they* can fix (a wrong
path, two grids that differ), so the command line prints the message alone and exits
with ``EXIT_BAD_INPUT``; anything else is our bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130  # the shell's convention for a run stopped by SIGINT


class InputError(ValueError):
    """The user's input (files, names, options, a model folder) is unusable."""


class ModelCardError(InputError):
    """A model folder's card or weights are malformed or do not match each other."""


class Cancelled(Exception):
    """The caller asked the run to stop; nothing was written."""
