"""User-facing error types.

Anything the user can fix (a path, a config value, a corrupt file) raises a
subclass of :class:`XbenchError`. The entry points print ``str(error)`` as one
line without a traceback (the traceback goes to the run log) and exit with
status 2.
"""


class XbenchError(Exception):
    """An error the user can fix; its message is one line saying what to do."""


class ConfigError(XbenchError):
    """A configuration value is missing, misspelled or out of range."""


class DataError(XbenchError):
    """The data on disk does not have the expected layout or content."""
