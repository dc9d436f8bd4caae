"""Helpers of the example application: its data sets and its checkpoints."""
