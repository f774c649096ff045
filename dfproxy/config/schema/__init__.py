"""Per-policy Gloo schema models (one module per option family)."""
