"""Compatibility with the APIs hookprune's users come from."""
