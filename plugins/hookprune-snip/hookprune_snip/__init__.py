"""SNIP for hookprune: prune once, before training moves the weights, by connection sensitivity."""

from hookprune_snip.snip import SNIPPruner, drop_smallest

__all__ = ["SNIPPruner", "drop_smallest"]
__version__ = "0.1.0"
