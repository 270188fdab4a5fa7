"""``edge-shitu gallery build``: embed a gallery (one process or a Ray cluster) into one index file.

Registered on the ``gallery`` sub-app by ``register(gallery_app)``; the work happens in
``edge_shitu.gallery_build`` (docs/gallery-build.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edge_shitu.gallery_build import DEFAULT_ITQ_SAMPLE, DEFAULT_SHARD_SIZE


def gallery_build(
    gallery: Path = typer.Argument(..., help="The gallery root: photos under it (class folders, or the paths "
                                   "of the label file)."),
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="PaddleClas 'path<TAB>label' file "
                                          "(default: a label file in the root, else one folder per label)."),
    rec: Path = typer.Option(..., "--rec", help="The extractor's Paddle model folder (FP32 reference; its "
                             "preprocess.json is the preprocessing either way)."),
    out: Path = typer.Option(..., "--out", "-o", help="The index file to write (e.g. gallery.esidx)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Embed on a Ray cluster: 'auto' (the cluster this "
                                      "machine belongs to), HOST:PORT, ray://HOST:10001, or 'local' (start one "
                                      "here). Default: this process."),
    artifact: Optional[Path] = typer.Option(None, "--artifact", help="Embed with this .tflite artifact of --rec "
                                            "instead of the FP32 reference."),
    bits: int = typer.Option(256, help="Code width (multiple of 64)."),
    method: str = typer.Option("itq", help="'itq' (learned on a sample) or 'sign'."),
    rerank_vectors: bool = typer.Option(False, "--rerank-vectors", help="Also store int8 features for "
                                        "cosine re-ranking (dim bytes per item, format 1.1)."),
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir for feature shards (default: "
                                        "OUT.work beside the index). Rerun with the same one to resume."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray actors (default: cluster "
                                          "CPUs / threads)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Inference threads per worker."),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", min=1, help="Photos per shard."),
    itq_sample: int = typer.Option(DEFAULT_ITQ_SAMPLE, "--itq-sample", min=2, help="Rows the hash is fitted on "
                                   "(all rows when fewer; else a seeded sample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fit sample."),
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
) -> None:
    """Build a gallery index from photos: embed (resumably, optionally on a Ray cluster), hash, write.

    Interrupted, it keeps its finished shards in the work dir: the same command resumes and embeds
    nothing twice. Unreadable photos are skipped, counted and listed; identical files are embedded once.
    """
    from edge_shitu.gallery_build import BuildOptions, build_gallery

    opts = BuildOptions(bits=bits, method=method, rerank_vectors=rerank_vectors, shard_size=shard_size,
                        itq_sample=itq_sample, seed=seed, threads=threads, workers=workers, ray=ray, work_dir=work)
    res = build_gallery(gallery, rec, out, labels=labels, artifact=artifact, opts=opts)
    if json_out:
        typer.echo(json.dumps(res.to_dict(), ensure_ascii=False))
        return
    typer.echo(f"built {res.out}: {res.indexed} items ({res.unique} distinct photos, {res.duplicates} duplicates, "
               f"{len(res.unreadable)} unreadable); embedded {res.photos_embedded} photos in "
               f"{res.embed_seconds:.1f} s ({res.photos_per_second:.1f}/s), {res.shards_reused} shard(s) reused")
    for b in res.unreadable:
        typer.echo(f"unreadable: {b['path']}: {b['error']}", err=True)


def register(gallery_app: typer.Typer) -> None:
    """Add ``build`` to the ``gallery`` sub-app."""
    gallery_app.command("build")(gallery_build)
