"""The human side of a bundle: report.md and report.png, written from the manifest alone.

Generated from the same dict that becomes manifest.json, so the report can never disagree
with what the runtime reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _fidelity_text(f: dict[str, Any]) -> str:
    parts = []
    for key, label in (("cosine_mean", "cos"), ("cosine_min", "min cos"), ("top1_agreement", "top-1 agree"),
                       ("box_recall_iou50", "box recall@0.5"),
                       ("box_recall_vs_native_size", "box recall vs native size"), ("score_mae", "score MAE")):
        if f.get(key) is not None:
            parts.append(f"{label} {f[key]:.4f}")
    task = f.get("task")
    if task:  # the extractor's gate: recall on the user's gallery (converters/task_gate.py)
        got, ref = 100 * task["recall_at_1"], 100 * task["reference_recall_at_1"]
        parts.append(f"recall@1 {got:.2f}% vs FP32 float {ref:.2f}% (-{task['drop_points']:.2f} pt, "
                     f"budget {task['budget_points']}, {task['queries']} queries)")
    if f.get("verified"):
        parts.append(f"({f['verified']})")
    return ", ".join(parts) or "-"


def _latency(a: dict[str, Any], threads: str) -> str:
    lat = (a.get("latency_ms") or {}).get("threads", {})
    return f"{lat[threads]:.2f}" if threads in lat else "-"


def rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for which in ("det", "rec"):
        model = manifest.get(which)
        if not model:
            continue
        ref = model.get("reference") or {}
        if ref:
            out.append({"model": which, "kind": "paddle:fp32 (reference)", "bytes": ref.get("bytes", 0),
                        "latency_1": _latency(ref, "1"), "latency_2": _latency(ref, "2"), "fidelity": "reference",
                        "lat1": (ref.get("latency_ms") or {}).get("threads", {}).get("1"), "cos": 1.0})
        for a in model["artifacts"]:
            f = a.get("fidelity") or {}
            out.append({"model": which, "kind": a["kind"], "bytes": a["bytes"], "latency_1": _latency(a, "1"),
                        "latency_2": _latency(a, "2"), "fidelity": _fidelity_text(f),
                        "lat1": (a.get("latency_ms") or {}).get("threads", {}).get("1"),
                        "cos": f.get("cosine_mean", f.get("box_recall_iou50"))})
    return out


def write_report(root: Path, manifest: dict[str, Any]) -> None:
    """report.md (always) and report.png (when matplotlib is installed: the convert extra has it)."""
    board = manifest["board"]
    lines = [
        f"# edge-shitu bundle for {board['name']}",
        "",
        f"{board['description']}. Runtime: {board['backend']} {board['precision']}, {board['threads']} threads.",
        f"Built by {manifest.get('created_by', 'edge-shitu')} at {manifest.get('created_at', '?')}.",
        "",
        "| model | artifact | size | ms @1 thread | ms @2 threads | fidelity vs FP32 Paddle |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows(manifest):
        lines.append(f"| {r['model']} | {r['kind']} | {_fmt_bytes(r['bytes'])} | {r['latency_1']} | {r['latency_2']} | "
                     f"{r['fidelity']} |")
    for which in ("det", "rec"):
        prune = (manifest.get(which) or {}).get("pruning")
        if prune:
            lines += ["", f"**{which} pruning** ({prune.get('mode')}, budget {prune.get('budget')}): params "
                      f"{prune.get('params_before'):,} -> {prune.get('params_after'):,}, MACs "
                      f"{prune.get('macs_before'):,} -> {prune.get('macs_after'):,} "
                      f"(-{100 * prune.get('macs_reduction', 0):.1f}%), {len(prune.get('ratios', {}))} convs pruned, "
                      f"fidelity {prune.get('fidelity', float('nan')):.5f} (cosine vs FP32)"]
    idx = manifest["index"]
    lines += ["", f"**Gallery index**: {idx.get('items')} items, {idx.get('labels')} labels, {idx.get('bits')}-bit "
              f"{idx.get('method')} codes ({idx.get('bits', 0) // 8} bytes per item), re-rank shortlist "
              f"{idx.get('rerank')}."]
    skipped = manifest.get("skipped_images")
    if skipped:
        lines += ["", f"{skipped} unreadable gallery image(s) were skipped."]
    lines += ["", "![size, latency and fidelity per artifact](report.png)", ""]
    (root / "report.md").write_text("\n".join(lines), encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the chart is a convenience; the table above has the same numbers
        return
    data = rows(manifest)
    names = [f"{r['model']} {r['kind'].split(' ')[0]}" for r in data]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(data) + 1.8))
    panels = (("size (MB)", [r["bytes"] / 1e6 for r in data]),
              ("latency, 1 thread (ms)", [r["lat1"] or 0 for r in data]),
              ("fidelity (cosine / box recall)", [r["cos"] if r["cos"] is not None else 0 for r in data]))
    for ax, (title, values) in zip(axes, panels):
        ax.barh(range(len(data)), values, color=["#888" if "reference" in r["kind"] else "#2a7" for r in data])
        ax.set_yticks(range(len(data)), names if ax is axes[0] else [""] * len(data))
        ax.invert_yaxis()
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.4g}", va="center", fontsize=8)
    axes[2].set_xlim(min([0.9, *[v for v in panels[2][1] if v]]), 1.01)
    fig.suptitle(f"edge-shitu bundle for {board['name']}")
    fig.tight_layout()
    fig.savefig(root / "report.png", dpi=90)
    plt.close(fig)
