"""The one exception type a user can cause.

Every error that comes from bad input (a missing or corrupt image, an absurd spec value, an
image too small for the patches asked for) raises :class:`FastSSLError` with a one-line message
that says what to do. The CLI prints that line and exits with status 2.
"""


class FastSSLError(Exception):
    """A user-caused error with a one-line, actionable message."""
