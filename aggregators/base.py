"""What an aggregator is: ``Aggregator`` (references in, one answer out, made with the ``Caller`` it is handed),
defined with the other seams in ``moa.interfaces`` and importable from here too."""

from __future__ import annotations

from moa.interfaces import Aggregator, Caller

__all__ = ["Aggregator", "Caller"]
