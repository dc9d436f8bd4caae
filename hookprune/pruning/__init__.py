"""Built-in pruners. Each is registered under its Distiller name in the ``hookprune.classes`` entry points."""
