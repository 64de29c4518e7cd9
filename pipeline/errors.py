"""The one base class for errors a user can fix; stages print its message as one line and exit non-zero."""


class PipelineError(Exception):
    """Bad input or environment: the message says what went wrong, where, and how to fix it."""
