"""``planvm index``, ``planvm kg import`` and ``planvm search``: the embedded knowledge base."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from planvm.cli.common import guarded, load_settings
from planvm.cli.options import kb_option
from planvm.cli.render import echo_err, preview, print_json


@click.command()
@click.argument("folder", type=click.Path())
@kb_option
@click.option("--include", multiple=True, help="Glob of files to read (repeatable; default: Markdown, text, reST, HTML).")
@click.option("--exclude", multiple=True, help="Glob of files to leave out (repeatable).")
@click.option("--chunk-size", type=click.IntRange(min=50), default=1000, show_default=True, help="Most characters per chunk.")
@click.option("--overlap", type=click.IntRange(min=0), default=150, show_default=True, help="Characters repeated between chunks.")
@click.option(
    "--graph",
    "graph_mode",
    type=click.Choice(["auto", "llm", "cooccurrence", "none"]),
    default="auto",
    show_default=True,
    help="How the knowledge graph is extracted: by the configured LLM, by term co-occurrence, or not at all (auto: LLM when one is configured).",
)
@click.option("--model", help="sentence-transformers model name or folder (default: the bundled all-MiniLM-L6-v2).")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links to files and folders (never to devices or pipes).")
@click.option(
    "--max-file-bytes",
    type=click.IntRange(min=1),
    default=20 * 1024 * 1024,
    show_default=True,
    help="Skip (with a warning) files larger than this.",
)
@click.option(
    "--ann-threshold",
    type=click.IntRange(min=0),
    default=200_000,
    show_default=True,
    help="From this many chunks on, also build an approximate (HNSW) index and search with it (0: never).",
)
@guarded
def index(
    folder: str, kb_path: str | None, include: tuple[str, ...], exclude: tuple[str, ...], chunk_size: int, overlap: int,
    graph_mode: str, model: str | None, follow_symlinks: bool, max_file_bytes: int, ann_threshold: int,
) -> None:
    """Index the documents under FOLDER into the knowledge base (only new or changed files are embedded)."""
    from tools.backends import make_llm
    from tools.kb import Embedder, index_folder
    from tools.kb.documents import DEFAULT_INCLUDE
    from tools.kb.graph import LLMExtractor

    settings = load_settings({"kb_path": kb_path})
    extractor: Any = None if graph_mode == "none" else "cooccurrence"
    if graph_mode == "llm" or (graph_mode == "auto" and settings.chosen_llm_backend() != "extractive"):
        extractor = LLMExtractor(make_llm(settings))
        if settings.chosen_llm_backend() == "extractive":
            raise click.UsageError("--graph llm needs an LLM: set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL, or PLANVM_LOCAL_MODEL")
    embedder = Embedder(model or settings.embedding_model)
    with _index_progress() as progress:
        report = index_folder(
            folder, settings.kb_path(), embedder=embedder, include=include or DEFAULT_INCLUDE, exclude=exclude,
            chunk_size=chunk_size, overlap=overlap, extractor=extractor, progress=progress,
            follow_symlinks=follow_symlinks, max_file_bytes=max_file_bytes,
            ann_threshold=ann_threshold if ann_threshold > 0 else None,
        )
    click.echo(
        f"indexed {report.files_indexed} file(s), reused {report.files_reused} unchanged, skipped {len(report.skipped)}; "
        f"{report.chunks} chunks ({report.chunks_embedded} embedded now), {report.entities} entities, "
        f"{report.relationships} relationships in {report.seconds:.1f} s -> {report.path}"
    )
    # Each skipped file was already named once, as a warning, while indexing.


@contextlib.contextmanager
def _index_progress(every: float = 5.0) -> Iterator[Any]:
    """Progress of an indexing: on a terminal, bars for files and chunks with an ETA; otherwise
    one line on stderr every ``every`` seconds (and when a stage finishes)."""
    import time

    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            tasks: dict[str, Any] = {}

            def show(what: str, done: int, total: int) -> None:
                if what not in tasks:
                    tasks[what] = bar.add_task(what, total=total)
                bar.update(tasks[what], completed=done, total=total)

            yield show
        return
    started = time.monotonic()
    last = [started]

    def line(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < every and done < total:
            return
        last[0] = now
        elapsed = now - started
        # An estimate only once there is something to go by (the first files include loading the model).
        eta = f", about {elapsed / done * (total - done):.0f} s left" if 0 < done < total and done >= max(3, total // 50) else ""
        echo_err(f"indexing: {what} {done}/{total} after {elapsed:.0f} s{eta}")

    yield line


@click.group()
def kg() -> None:
    """The knowledge graph."""


@kg.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@kb_option
@guarded
def import_(file: str, kb_path: str | None) -> None:
    """Add the graph in FILE ({entities, relationships} JSON) to the knowledge base."""
    from tools.kb import import_graph

    settings = load_settings({"kb_path": kb_path})
    report = import_graph(settings.kb_path(), file)
    click.echo(f"the graph now has {report.entities} entities and {report.relationships} relationships -> {report.path}")


@click.command()
@click.argument("query")
@kb_option
@click.option("--graph", "use_graph", is_flag=True, help="Search the knowledge graph instead of the chunks.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="How many chunks.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@guarded
def search(query: str, kb_path: str | None, use_graph: bool, top_k: int, as_json: bool) -> None:
    """Search the knowledge base for QUERY (chunks, or with --graph entities and relationships)."""
    from rich.console import Console
    from rich.table import Table

    from tools.backends import make_knowledge_base

    kb = make_knowledge_base(load_settings({"kb_path": kb_path}))
    result = kb.graph(query) if use_graph else kb.search(query, top_k)
    if as_json:
        print_json(result)
        return
    console = Console()
    if use_graph:
        table = Table("source", "relationship", "target")
        for r in result["relationships"]:
            table.add_row(r["source_entity"], preview(r["relationship"], 80), r["target_entity"])
        console.print(table)
        console.print(f"{len(result['entities'])} entities: " + ", ".join(e["name"] for e in result["entities"]))
    else:
        table = Table("score", "source", "content")
        for chunk in result:
            table.add_row(f"{chunk['score']:.3f}", chunk["source_uri"], preview(chunk["content"], 100))
        console.print(table)
