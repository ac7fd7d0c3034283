"""The one protocol every model backend implements: ``Proposer``, defined with the other seams in
``moa.interfaces`` and importable from here too."""

from __future__ import annotations

from moa.interfaces import Proposer

__all__ = ["Proposer"]
