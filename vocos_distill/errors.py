"""Errors that a user fixes by changing an option or a file, as opposed to bugs.

The entry points print such an error's message alone (it names the option or file at
fault), without a traceback, and exit with status 1.
"""


class ConfigError(Exception):
    """Raised for a wrong option, a missing or unusable file, or weights that cannot be had."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder that an option names does not exist."""


class VocoderUnavailableError(ConfigError):
    """A student cannot be loaded here (missing, offline and not cached, corrupt, made for another
    mel); the message names the file or setting."""


class VocoderFallbackWarning(UserWarning):
    """The runtime did not put in place what was asked for first, and says what it put in place
    instead and why: :func:`vocos_distill.use_student` kept Chatterbox's own HiFT, or
    ``runtime="auto"`` passed over a form of the release (a broken file, an int8 graph wrong here)."""


class Int8FallbackWarning(VocoderFallbackWarning):
    """``runtime="auto"`` did not use a release's int8 graph on this machine; the message says why."""
