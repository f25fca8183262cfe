"""Patch series for pinned SGLang versions (a package so that wheels carry them)."""
