"""The engine behind hookprune's public names: dispatch, masks, windows, parameter names and the plugin
registry. Nothing here is part of the public contract; plugin authors import from ``hookprune`` itself."""
