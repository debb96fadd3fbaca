"""What every `streams` sub-command shares: the settings of the invocation, the consoles, and
turning our own errors into one line on stderr and an exit code. The sub-commands import this
module; `streams.cli.main` imports the sub-commands (no import circle)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import typer
from rich.console import Console

from streams.errors import SettingsError, StreamsError
from streams.settings import Settings, load_settings

# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@dataclass
class Context:
    overrides: dict[str, object] = field(default_factory=dict)
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.overrides)
        return self._settings

    def services(self) -> Settings:
        """Settings with unset service addresses filled from running `streams dev` services."""
        from streams.dev.services import with_local_services

        return with_local_services(self.settings())


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Turn our own errors into one line on stderr and a non-zero exit code."""
    try:
        return func(*args, **kwargs)
    except SettingsError as exc:
        fail(str(exc))
    except StreamsError as exc:
        fail(str(exc), code=1)


def option(envvar: str, help_text: str) -> Any:
    return typer.Option(envvar=envvar, help=help_text, show_envvar=True)
