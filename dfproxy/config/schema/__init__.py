"""Gloo option schemas of the policies (one module per policy family)."""
