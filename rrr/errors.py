"""Errors the backplane raises, in a module of their own so handlers never import redis."""

from __future__ import annotations


class BackplaneError(Exception):
    """Redis did not answer in time or refused; the caller decides how to degrade."""


class OutcomeUnknown(BackplaneError):
    """The call was sent but timed out: it may or may not have taken effect (a PUBLISH may
    have been delivered). Callers must not report it as a plain failure, or retrying
    publishers duplicate."""
