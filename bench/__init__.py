"""Reproducible benchmarks: KubeRDE against direct TCP and OpenSSH `ssh -L`, in one run.

Absolute numbers on shared machines move by tens of percent between runs, so every peer is
measured in the same session and the report is built around ratios (DESIGN.md §8).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROOT"]

#: The repository root: child processes run `python -m bench.<module>` from here.
ROOT = Path(__file__).resolve().parent.parent
