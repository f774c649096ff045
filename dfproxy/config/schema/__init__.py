"""Per-policy Gloo schema models (each module one option family)."""
