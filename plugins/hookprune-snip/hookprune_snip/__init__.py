"""SNIP for hookprune: prune once, before training moves the weights, by connection sensitivity."""

from hookprune_snip.snip import SNIPPruner

__all__ = ["SNIPPruner"]
__version__ = "0.1.0"
