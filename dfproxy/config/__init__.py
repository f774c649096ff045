"""Configuration: the internal model the proxy runs from, and the loaders that produce it."""
