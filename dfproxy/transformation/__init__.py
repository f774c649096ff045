"""Gloo transformations: inja templates, extractors, and the transformation they make up."""
