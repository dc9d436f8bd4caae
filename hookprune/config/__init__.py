"""Schedules in Distiller's YAML format: reading them safely and building a scheduler from them."""
