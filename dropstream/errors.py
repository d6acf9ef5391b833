"""The root of dropstream's typed errors.

Each package raises its own subclass (``WireFormatError``, ``BundleError``, ...) so callers can
catch precisely; the CLI catches :class:`DropstreamError` and prints the message, which always
says what was wrong and what to do about it.
"""


class DropstreamError(Exception):
    """Base class of every error dropstream raises on purpose."""


class NotAvailableError(DropstreamError):
    """A flow that exists in the CLI but is not implemented in this release."""
