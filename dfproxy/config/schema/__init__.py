"""Per-policy config schemas (Gloo shapes), one module per option family."""
