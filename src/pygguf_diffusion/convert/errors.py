from __future__ import annotations


class ConversionError(Exception):
    """A checkpoint cannot be converted. The message says what is wrong and what to do."""
