"""Config schema models of the policy families (one module per family)."""
