"""The ``edge-shitu`` command.

Sub-commands live in their own modules and import their heavy dependencies lazily, so the
CLI starts fast on a Raspberry Pi. Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from edge_shitu import __version__, cli_convert, cli_recognize
from edge_shitu.cli_index import index_app
from edge_shitu.errors import EdgeShituError

app = typer.Typer(
    name="edge-shitu",
    help="Take PP-ShiTu (detector -> extractor -> search) to small devices.\n\n"
    "Build a compact binary gallery index and search it by Hamming distance, on a workstation "
    "or on a Raspberry Pi / Jetson / phone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(index_app, name="index")
cli_convert.register(app)
cli_recognize.register(app)


@app.command()
def version() -> None:
    """Print the edge-shitu version."""
    typer.echo(__version__)


@app.command()
def boards(
    json_out: bool = typer.Option(False, "--json", help="Print the full configs as JSON."),
) -> None:
    """List the boards a bundle can be built for (board_configs/)."""
    import json

    from edge_shitu.boards import list_boards, load_board

    configs = [load_board(name) for name in list_boards()]
    if json_out:
        typer.echo(json.dumps([b.to_dict() for b in configs], ensure_ascii=False, indent=1))
        return
    for b in configs:
        typer.echo(f"{b.name:<14} {b.backend:<10} {b.precision:<5} {b.threads} threads  {b.description}")


@app.command()
def demo(
    out: str = typer.Option("demo_out", "--out", "-o", help="Folder for the demo's gallery index."),
    bits: int = typer.Option(256, help="Code width of the learned index."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Build a gallery index from the real PP-ShiTu drink embeddings and search it.

    Uses ../shared/assets (or EDGE_SHITU_ASSETS) when present, generated clustered features
    otherwise, and prints recall, sizes and a few searches.
    """
    from edge_shitu.demo import run_demo

    run_demo(out, bits=bits, as_json=json_out)


def main() -> None:
    try:
        app()
    except EdgeShituError as e:
        typer.echo(f"edge-shitu: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("edge-shitu: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
