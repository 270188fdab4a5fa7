"""``edge-shitu index …``: build, search, add to, remove from and inspect a gallery index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional  # List: typer evaluates command annotations (Python 3.8)

import typer

index_app = typer.Typer(
    help="Gallery index: compact binary codes searched by Hamming distance (docs/index-format.md).",
    no_args_is_help=True,
)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


@index_app.command("build")
def build(
    features: Path = typer.Argument(..., help="Gallery features, float32 .npy of shape (N, dim)."),
    labels: Path = typer.Option(..., "--labels", "-l", help="One label per row; 'path<TAB>label' lines "
                                "(PaddleClas) use the last tab field."),
    out: Path = typer.Option(..., "--out", "-o", help="The index file to write (e.g. gallery.esidx)."),
    bits: Optional[int] = typer.Option(None, help="Code width: 64/128/256/512 (default 256 for itq; "
                                       "the feature size for sign)."),
    method: str = typer.Option("itq", help="'itq': learned on the gallery (PCA + ITQ rotation); "
                               "'sign': PaddleClas's sign binarization."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="One integer id per row (default: 0..N-1)."),
    rerank_vectors: bool = typer.Option(False, "--rerank-vectors", help="Also store each item's feature as "
                                        "int8 (dim bytes per item): 'search --rerank' then "
                                        "scores the shortlist by cosine with them, about as well as float search."),
    json_out: bool = typer.Option(False, "--json", help="Print the index info as JSON."),
) -> None:
    """Build a gallery index from float features and labels."""
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.labels import load_features, read_ids, read_labels

    x = load_features(features)
    labs = read_labels(labels)
    id_list = read_ids(ids) if ids is not None else None
    index = GalleryIndex.build(x, labs, bits=bits, method=method, ids=id_list, rerank_vectors=rerank_vectors,
                               meta={"source_features": Path(features).name})
    index.save(out)
    _report(index, json_out, f"built {out}")


def _report(index: Any, json_out: bool, headline: str) -> None:
    info = index.info()
    if json_out:
        _print_json(info)
        return
    typer.echo(f"{headline}: {info['live']} items ({info['deleted']} deleted), {info['labels']} labels, "
               f"{info['bits']}-bit {info['method']} codes, {info['bytes_per_item']} bytes/item, "
               f"{info['file_bytes']} bytes on disk")


@index_app.command("search")
def search(
    gallery: Path = typer.Argument(..., help="The index file."),
    queries: Path = typer.Argument(..., help="Query features, float32 .npy (Q, dim) or (dim,)."),
    k: int = typer.Option(5, "--k", "-k", min=1, help="Results per query (at most the number of items)."),
    rerank: int = typer.Option(0, min=0, help="Re-rank a Hamming shortlist of this many items (at most all "
                               "of them) by cosine with the stored int8 vectors, or else by the asymmetric "
                               "float-query score (0: off)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON list per query row, best first: "
                                  '[{"id", "label", "distance"[, "score"]}, ...].'),
) -> None:
    """Find the k nearest gallery items of each query row."""
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.labels import load_features

    index = GalleryIndex.open(gallery)
    x = load_features(queries)
    results = index.query(x, k=k, rerank=rerank)
    for i, matches in enumerate(results):
        if json_out:
            _print_json([m.to_dict() for m in matches])
        else:
            best = ", ".join(f"{m.label} (id {m.id}, d={m.distance})" for m in matches)
            typer.echo(f"query {i}: {best}")


@index_app.command("add")
def add(
    gallery: Path = typer.Argument(..., help="The index file to extend (rewritten atomically)."),
    features: Path = typer.Argument(..., help="New items' features, float32 .npy (N, dim)."),
    labels: Path = typer.Option(..., "--labels", "-l", help="One label per row."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="One integer id per row (default: next free)."),
    json_out: bool = typer.Option(False, "--json", help='Print {"added": [ids], "info": {...}}.'),
) -> None:
    """Add items without refitting the hash (the stored parameters hash them)."""
    from edge_shitu.gallery_index import edit_index_file
    from edge_shitu.labels import load_features, read_ids, read_labels

    x = load_features(features)
    labs = read_labels(labels)
    id_list = read_ids(ids) if ids is not None else None
    with edit_index_file(gallery) as index:
        new_ids = index.add(x, labs, ids=id_list)
    if json_out:
        _print_json({"added": [int(i) for i in new_ids], "info": index.info()})
    else:
        _report(index, False, f"added {len(new_ids)} items (ids {_span(new_ids)}) to {gallery}")


def _span(ids: Any) -> str:
    ids = [int(i) for i in ids]
    if not ids:
        return "none"
    return f"{ids[0]}..{ids[-1]}" if len(ids) > 3 else ", ".join(map(str, ids))


def _edit_and_report(gallery: Path, edit: Any, json_out: bool, key: str, message: str) -> None:
    """One locked, atomic edit of the index file, then its count and the new info printed."""
    from edge_shitu.gallery_index import edit_index_file

    with edit_index_file(gallery) as index:
        n = edit(index)
    if json_out:
        _print_json({key: n, "info": index.info()})
    else:
        _report(index, False, message.format(n=n, gallery=gallery))


@index_app.command("remove")
def remove(
    gallery: Path = typer.Argument(..., help="The index file (rewritten atomically)."),
    ids: List[int] = typer.Argument(..., help="Ids to remove."),  # noqa: UP006
    compact: bool = typer.Option(False, help="Also drop the removed rows from the file now."),
    json_out: bool = typer.Option(False, "--json", help='Print {"removed": n, "info": {...}}.'),
) -> None:
    """Remove items by id (all or nothing: an unknown id changes nothing)."""

    def edit(index: Any) -> int:
        n = index.remove(ids)
        if compact:
            index.compact()
        return n

    _edit_and_report(gallery, edit, json_out, "removed", "removed {n} items from {gallery}")


@index_app.command("compact")
def compact(
    gallery: Path = typer.Argument(..., help="The index file (rewritten atomically)."),
    json_out: bool = typer.Option(False, "--json", help='Print {"dropped": n, "info": {...}}.'),
) -> None:
    """Drop removed rows from the file (ids of the other items do not change)."""

    _edit_and_report(gallery, lambda index: index.compact(), json_out, "dropped",
                     "dropped {n} removed rows from {gallery}")


@index_app.command("info")
def info(
    gallery: Path = typer.Argument(..., help="The index file."),
    json_out: bool = typer.Option(False, "--json", help="Print the info as JSON."),
    show_ids: bool = typer.Option(False, "--ids", help="Also list live ids and their labels."),
) -> None:
    """Check an index (every CRC, the section table and the padding) and describe it."""
    from edge_shitu.gallery_index import GalleryIndex

    index = GalleryIndex.open(gallery)
    data = index.info()
    if show_ids:
        live = index.data.deleted_mask()
        rows = [r for r in range(index.data.count) if not live[r]]
        data["items"] = [{"id": int(index.data.ids[r]), "label": lab}
                         for r, lab in zip(rows, index.labels_of_rows(rows))]
    if json_out:
        _print_json(data)
    else:
        for key, value in data.items():
            typer.echo(f"{key:>15}: {value}")
