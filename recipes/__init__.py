"""Recipes: one YAML file per model x hardware x configuration (a package so that wheels carry them)."""
