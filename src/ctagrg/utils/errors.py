"""Exception types shared by every layer; here, at the bottom, so that ``ctagrg.utils`` never imports upward."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that does not match its dataclass."""
