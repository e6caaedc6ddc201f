"""`reviewstack`: the one command-line tool. Each installed service adds its verbs through the
`reviewstack.cli` entry-point group (data-prep adds `data`, …), so an image holding one service carries
only that service's verbs, and this module never imports a service.

Errors a user can act on are printed as one line, never as a traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console

from reviewstack.common.errors import ReviewStackError
from reviewstack.common.logging import configure_logging

app = typer.Typer(
    name="reviewstack",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="review-stack: fine-tune, serve and evaluate an LLM that writes peer reviews.",
)
err = Console(stderr=True)
_debug = False


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks and debug logs"),
    log_level: str = typer.Option("WARNING", envvar="REVIEWSTACK_LOG_LEVEL", help="log level"),
) -> None:
    global _debug
    _debug = debug
    configure_logging("DEBUG" if debug else log_level.upper(), "console")


def _add_service_commands() -> None:
    """Each entry point is a verb: a Typer app (a verb with sub-commands, `train run …`) or a function
    (a verb that is one command, `review PAPER`)."""
    for entry in sorted(entry_points(group="reviewstack.cli"), key=lambda e: e.name):
        verb = entry.load()
        if isinstance(verb, typer.Typer):
            app.add_typer(verb, name=entry.name)
        else:
            app.command(name=entry.name)(verb)


def main() -> None:
    _add_service_commands()
    try:
        app()
    except ReviewStackError as exc:
        if _debug:
            raise
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and not _debug:
            err.print(f"[bold red]error:[/] the server answered {exc.code().name}: {exc.details()}")
            sys.exit(3)
        raise


if __name__ == "__main__":
    main()
