"""Errors that a user fixes by changing an option or a file, as opposed to bugs.

The entry points print such an error's message alone (it names the option or file at
fault), without a traceback, and exit with status 1.
"""


class ConfigError(Exception):
    """Raised for a wrong option, a missing or unusable file, or weights that cannot be had."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder that an option names does not exist."""
