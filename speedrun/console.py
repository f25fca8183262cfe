"""The CLI's consoles: every command prints through `cli_console()`.

On a terminal, rich's own width. Anywhere else (a pipe, a CI log, typer's CliRunner) the output is read by
programs and greps, so it must not depend on the width: lines are not wrapped and tables get every column they
need, never a `…` in a name because a log happened to be 80 columns wide. Decided at each print, from the
stream itself (not FORCE_COLOR), because tests swap sys.stdout after the consoles are made.
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console, ConsoleDimensions
from rich.rule import Rule

UNWRAPPED = 100_000  # columns of non-terminal output: no line or table row here comes near it
RULE_WIDTH = 80  # a rule is decoration: it does not stretch to UNWRAPPED columns


class CliConsole(Console):
    def on_terminal(self) -> bool:
        try:
            return bool(getattr(self.file, "isatty", lambda: False)())
        except ValueError:  # a closed capture stream at interpreter exit
            return False

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.on_terminal() else ConsoleDimensions(UNWRAPPED, size.height)

    def rule(
        self,
        title: str = "",
        *,
        characters: str = "─",
        style: str = "rule.line",
        align: Literal["left", "center", "right"] = "center",
    ) -> None:
        rule = Rule(title, characters=characters, style=style, align=align)
        self.print(rule, width=None if self.on_terminal() else RULE_WIDTH)


def cli_console(stderr: bool = False) -> CliConsole:
    """The console for stdout (or stderr) of a `speedrun` command."""
    return CliConsole(stderr=stderr)
