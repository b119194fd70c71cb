"""Exception root of the streamer package.

Bad *input* (an undecodable event) is never an exception: it is data routed to the dead-letter topic.
These exceptions mark broken invariants, invalid configuration, or infrastructure that failed.
"""

from __future__ import annotations


class StreamerError(Exception):
    """Root of every error raised by the streamer package."""


class ConfigError(StreamerError):
    """Configuration is invalid; the message names the offending key."""


class DataError(StreamerError):
    """A data file for training or evaluation cannot be used; the message names file, row or column."""


class DeliveryError(StreamerError):
    """The broker did not acknowledge an alert or dead letter; the batch's offsets are not committed."""


class BrokerError(StreamerError):
    """The embedded broker could not be started or reached."""
