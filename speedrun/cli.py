"""speedrun: make SGLang faster with Triton overlays, and prove it against stock SGLang."""

from __future__ import annotations

import signal

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def _register_commands() -> None:
    # Each area owns its commands; this file only wires them in.
    from speedrun import commands
    from speedrun.eval import cli as eval_cli

    commands.register(app)
    eval_cli.register(app)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (`timeout`, `kill`, a job scheduler) unwinds like Ctrl-C, so every launched server's process
    group is torn down by its context manager and partial results are kept, instead of orphaned GPU processes."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    _register_commands()
    app()


if __name__ == "__main__":
    main()
