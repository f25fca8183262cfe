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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: unwinds like Ctrl-C; the CLI then exits with 128 + `signum` (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)  # args == (signum,): it pickles back (e.g. from a multiprocessing worker)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


_signals: list[int] = []  # Ctrl-C / SIGTERM received, in order: the first decides the exit code


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM (`timeout`, `kill`, a job scheduler) unwind alike, so every launched server's process
    group is torn down by its context manager and partial results are kept, instead of orphaned GPU processes.
    A second one during that teardown escalates it to SIGKILL (launch/server.py)."""
    _signals.append(signum)
    raise Interrupted(signum)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    _register_commands()
    try:
        app()
    except SystemExit as exc:
        if _signals:  # whatever click/typer or a command made of the interrupt: 130 for SIGINT, 143 for SIGTERM
            raise SystemExit(128 + _signals[0]) from exc
        raise
    except KeyboardInterrupt:  # raised past typer (older click versions)
        raise SystemExit(128 + (_signals or [signal.SIGINT])[0]) from None


if __name__ == "__main__":
    main()
