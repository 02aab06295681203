"""Errors the backplane raises, in a module of their own so handlers never import redis."""

from __future__ import annotations


class BackplaneError(Exception):
    """Redis refused the call or could not be reached; the caller decides how to degrade. Only its
    subclass `OutcomeUnknown` leaves open whether the call ran."""


class OutcomeUnknown(BackplaneError):
    """The call may have reached Redis and no answer came (it timed out, its connection broke after
    it was written, or the reply was unreadable): it may or may not have taken effect (a PUBLISH
    may have been delivered). Callers must not report it as a plain failure, or retrying
    publishers duplicate (`rrr.backplane.outcome`)."""
