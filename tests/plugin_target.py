"""A stand-in SGLang target for plugin tests: a plain function the real HookRegistry can patch."""


def compute(x: int) -> str:
    return f"stock({x})"
