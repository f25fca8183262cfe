"""Sane synthetic weights for `--load-format dummy`: the same numbers in every process and on both sides
(baseline and overlay), so timings and agreement checks compute on weights that behave like a model's."""
