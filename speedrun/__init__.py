"""sglang-speedrun: Triton overlays for SGLang, proven against stock SGLang."""

__version__ = "0.1.0"
