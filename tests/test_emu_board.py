"""Device-side checks, meant to run INSIDE the emulated Raspberry Pi (scripts/emu_run.sh).

``make test-emu`` runs this file (with the other device tests) in an aarch64 Debian bookworm
userland under qemu (``EMU_SUITE=bullseye``: the glibc 2.31 / Python 3.9 / tflite-runtime 2.13 one);
``tests/test_emu_host.py`` also runs it there and compares the index
results with the host's bit for bit. On the host it runs too and is harmless: the same
checks, minus the architecture assertions.

Inside the board ``EDGE_SHITU_EMU`` is set (by emu_run.sh); then:

- ``EDGE_SHITU_EXPECTED``: a JSON file of expected index results written by the host, compared
  exactly (distances, ids, labels, file SHA-256s, re-rank scores);
- ``EDGE_SHITU_EMU_RESULTS``: a folder where this side writes its results for the host
  (``results-auto.json``: native kernel when loaded; ``results-numpy.json``).

No TensorFlow on the device and no model file in git: the LiteRT checks run tiny .tflite
flatbuffers built here byte by byte (a float FULLY_CONNECTED + ADD graph and a full-int8
FULLY_CONNECTED), with inputs chosen so that the exact outputs are known.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import platform
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EMU = os.environ.get("EDGE_SHITU_EMU")  # "aarch64 cortex-a72" inside the emulated board
# which board (scripts/emu_rootfs.sh EMU_SUITE): bookworm (glibc 2.36, Python 3.11, numpy 2, both TFLite
# runtimes) or bullseye (glibc 2.31, Python 3.9, numpy 1.x, tflite-runtime 2.13 only)
SUITE = os.environ.get("EDGE_SHITU_EMU_SUITE") or ("bookworm" if EMU else "")
BOARD_SPEC = {"bookworm": {"numpy": 2, "glibc": None, "python": None,
                           "interpreters": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")},
              "bullseye": {"numpy": 1, "glibc": "2.31", "python": "3.9",
                           "interpreters": ("tflite_runtime.interpreter",)}}


# ============================================================================ the board itself
def board_info() -> dict[str, Any]:
    import edge_shitu

    return {"machine": platform.machine(), "python": platform.python_version(),
            "libc": "-".join(platform.libc_ver()), "numpy": np.__version__,
            "byteorder": sys.byteorder, "edge_shitu": str(Path(edge_shitu.__file__).parent),
            "emu": EMU}


def test_platform_is_the_emulated_board() -> None:
    info = board_info()
    print("board:", json.dumps(info))
    if not EMU:
        return
    assert info["machine"] == "aarch64", info
    assert info["byteorder"] == "little"
    assert info["libc"].startswith("glibc-"), info
    spec = BOARD_SPEC[SUITE]
    assert int(np.__version__.split(".")[0]) == spec["numpy"], f"the {SUITE} board runs numpy {spec['numpy']}"
    if spec["glibc"]:
        assert info["libc"] == f"glibc-{spec['glibc']}", info
    if spec["python"]:
        assert info["python"].startswith(spec["python"] + "."), info
    # the package under test is the installed one, not the read-only checkout
    assert info["edge_shitu"].startswith("/opt/site/"), info


# ============================================================================ a .tflite by hand
# Minimal FlatBuffers writer: objects are laid out front to back, each child after the object
# that refers to it (uoffsets are unsigned and point forward), every scalar aligned to its size
# from the start of the buffer, as the FlatBuffers verifier that LiteRT runs demands.
class _Table:
    def __init__(self, **slots: tuple[int, str, Any]) -> None:
        self.slots = slots  # name -> (slot, kind, value); kind: u8 i8 u32 i32 off


class _Vec:
    def __init__(self, kind: str, items: Any, align: int = 4) -> None:
        self.kind, self.items, self.align = kind, items, align  # kind: u8 i32 i64 f32 off


class _Str:
    def __init__(self, s: str) -> None:
        self.s = s


_SCALAR = {"u8": "<B", "i8": "<b", "u32": "<I", "i32": "<i", "i64": "<q", "f32": "<f"}


class _Builder:
    def __init__(self) -> None:
        self.buf = bytearray()

    def pad_to(self, align: int, extra: int = 0) -> None:
        """Pad so that (len + extra) is a multiple of align."""
        while (len(self.buf) + extra) % align:
            self.buf.append(0)

    def write(self, obj: Any) -> int:
        """Lay out obj (and then its children); returns the position uoffsets point at."""
        pending: list[tuple[int, Any]] = []  # (uoffset field position, child)
        if isinstance(obj, _Str):
            data = obj.s.encode()
            self.pad_to(4)
            pos = len(self.buf)
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif isinstance(obj, _Vec):
            size = 4 if obj.kind == "off" else struct.calcsize(_SCALAR[obj.kind])
            self.pad_to(max(4, size, obj.align), extra=4)  # elements aligned, length just before
            pos = len(self.buf)
            self.buf += struct.pack("<I", len(obj.items))
            if obj.kind == "off":
                for child in obj.items:
                    pending.append((len(self.buf), child))
                    self.buf += b"\0\0\0\0"
            elif obj.kind == "u8":
                self.buf += bytes(obj.items)
            else:
                self.buf += struct.pack(f"<{len(obj.items)}{_SCALAR[obj.kind][1]}", *obj.items)
        else:
            fields = sorted(obj.slots.values(), key=lambda f: -(4 if f[1] == "off" else
                                                                 struct.calcsize(_SCALAR[f[1]])))
            layout, cursor = [], 4  # the table starts with its soffset to the vtable
            for slot, kind, value in fields:
                size = 4 if kind == "off" else struct.calcsize(_SCALAR[kind])
                cursor = (cursor + size - 1) // size * size
                layout.append((slot, kind, value, cursor))
                cursor += size
            table_size = (cursor + 3) // 4 * 4
            nslots = max(f[0] for f in fields) + 1
            vtable = [0] * nslots
            for slot, _, _, off in layout:
                vtable[slot] = off
            vt_bytes = struct.pack(f"<HH{nslots}H", 4 + 2 * nslots, table_size, *vtable)
            self.pad_to(4, extra=len(vt_bytes))  # the table right after its vtable is 4-aligned
            vt_pos = len(self.buf)
            self.buf += vt_bytes
            pos = len(self.buf)
            self.buf += struct.pack("<i", pos - vt_pos) + bytes(table_size - 4)
            for _, kind, value, off in layout:
                if kind == "off":
                    pending.append((pos + off, value))
                else:
                    struct.pack_into(_SCALAR[kind], self.buf, pos + off, value)
        for at, child in pending:
            struct.pack_into("<I", self.buf, at, self.write(child) - at)
        return pos

    def finish(self, root: _Table, ident: bytes) -> bytes:
        self.buf = bytearray(8)
        self.buf[4:8] = ident
        struct.pack_into("<I", self.buf, 0, self.write(root))
        self.pad_to(16)
        return bytes(self.buf)


# schema.fbs numbers (tensorflow/compiler/mlir/lite/schema/schema.fbs)
FLOAT32, INT32, INT8 = 0, 2, 9
OP_ADD, OP_FULLY_CONNECTED = 0, 9


def _tensor(name: str, shape: list[int], ttype: int, buffer: int,
            quant: tuple[float, int] | None = None) -> _Table:
    slots = {"shape": (0, "off", _Vec("i32", shape)), "type": (1, "i8", ttype),
             "buffer": (2, "u32", buffer), "name": (3, "off", _Str(name))}
    if quant is not None:  # QuantizationParameters: scale (slot 2), zero_point (slot 3)
        slots["quantization"] = (4, "off", _Table(scale=(2, "off", _Vec("f32", [quant[0]])),
                                                  zero_point=(3, "off", _Vec("i64", [quant[1]]))))
    return _Table(**slots)


def _model(tensors: list[_Table], buffers: list[bytes], ops: list[tuple[int, list[int], list[int]]],
           opcodes: list[tuple[int, int]], inputs: list[int], outputs: list[int]) -> bytes:
    operators = [_Table(opcode_index=(0, "u32", oc), inputs=(1, "off", _Vec("i32", i)),
                        outputs=(2, "off", _Vec("i32", o))) for oc, i, o in ops]
    codes = [_Table(deprecated_builtin_code=(0, "i8", min(code, 127)), version=(2, "i32", version),
                    builtin_code=(3, "i32", code)) for code, version in opcodes]
    subgraph = _Table(tensors=(0, "off", _Vec("off", tensors)), inputs=(1, "off", _Vec("i32", inputs)),
                      outputs=(2, "off", _Vec("i32", outputs)), operators=(3, "off", _Vec("off", operators)),
                      name=(4, "off", _Str("main")))
    bufs = [_Table(data=(0, "off", _Vec("u8", list(b), align=16))) if b else _Table(data=(0, "off", _Vec("u8", [])))
            for b in buffers]
    model = _Table(version=(0, "u32", 3), operator_codes=(1, "off", _Vec("off", codes)),
                   subgraphs=(2, "off", _Vec("off", [subgraph])), description=(3, "off", _Str("edge-shitu emu")),
                   buffers=(4, "off", _Vec("off", bufs)))
    return _Builder().finish(model, b"TFL3")


def tiny_float_model() -> tuple[bytes, Any]:
    """y = (x @ W.T + b) + c with x [1, 4]; dyadic values, so every kernel's result is exact."""
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 4
    b = np.array([0.5, -1.0, 2.0], np.float32)
    c = np.array([1.0, 0.25, -0.5], np.float32)
    tensors = [_tensor("x", [1, 4], FLOAT32, 0), _tensor("w", [3, 4], FLOAT32, 1),
               _tensor("b", [3], FLOAT32, 2), _tensor("t", [1, 3], FLOAT32, 0),
               _tensor("c", [3], FLOAT32, 3), _tensor("y", [1, 3], FLOAT32, 0)]
    model = _model(tensors, [b"", w.tobytes(), b.tobytes(), c.tobytes()],
                   ops=[(0, [0, 1, 2], [3]), (1, [3, 4], [5])],
                   opcodes=[(OP_FULLY_CONNECTED, 1), (OP_ADD, 1)], inputs=[0], outputs=[5])
    return model, lambda x: x @ w.T + b + c


def tiny_int8_model() -> tuple[bytes, Any]:
    """Full-int8 FULLY_CONNECTED (the Pi's precision): real multiplier 1/4 and accumulators
    that are multiples of 4, so the requantized output is exact whatever the rounding mode."""
    sx, zx, sw, sy, zy = 0.5, 3, 0.25, 0.5, -2
    w = np.array([[1, -2, 3, 4], [-5, 6, 7, -8], [2, 2, -2, 2]], np.int8)
    x = np.array([[7, -1, 10, 3]], np.int8)
    acc0 = ((x.astype(np.int32) - zx) @ w.T.astype(np.int32))[0]
    b = (np.array([8, -12, 20], np.int32) - acc0 % 4).astype(np.int32)  # acc + b divisible by 4
    tensors = [_tensor("x", [1, 4], INT8, 0, (sx, zx)), _tensor("w", [3, 4], INT8, 1, (sw, 0)),
               _tensor("b", [3], INT32, 2, (sx * sw, 0)), _tensor("y", [1, 3], INT8, 0, (sy, zy))]
    model = _model(tensors, [b"", w.tobytes(), b.tobytes()], ops=[(0, [0, 1, 2], [3])],
                   opcodes=[(OP_FULLY_CONNECTED, 4)], inputs=[0], outputs=[3])

    def ref(xq: np.ndarray) -> np.ndarray:
        acc = (xq.astype(np.int32) - zx) @ w.T.astype(np.int32) + b
        assert (acc % 4 == 0).all()
        return np.clip(acc // 4 + zy, -128, 127).astype(np.int8)

    return model, (x, ref)


INTERPRETERS = ["ai_edge_litert.interpreter", "tflite_runtime.interpreter"]


def _interpreter_class(module: str) -> Any:
    try:
        return importlib.import_module(module).Interpreter
    except ImportError as e:
        if EMU and module in BOARD_SPEC[SUITE]["interpreters"]:  # emu_rootfs.sh installs it: a failure there
            pytest.fail(f"{module} does not import on the emulated {SUITE} board: {e}")
        if EMU:
            pytest.skip(f"{module} does not install on the {SUITE} board (glibc 2.31): tflite-runtime is its runtime")
        pytest.skip(f"{module} is not installed here ({e})")


def check_float_model(module: str) -> None:
    interp = _interpreter_class(module)(model_content=tiny_float_model()[0], num_threads=2)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["shape"].tolist() == [1, 4] and out["shape"].tolist() == [1, 3] and out["dtype"] == np.float32
    ref = tiny_float_model()[1]
    for x in (np.array([[1.0, -2.0, 0.5, 4.0]], np.float32), np.array([[0.0, 0.0, 0.0, 0.0]], np.float32),
              np.array([[-8.0, 3.25, 16.0, -0.75]], np.float32)):
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        assert np.array_equal(y, ref(x)), (module, x, y, ref(x))


def check_int8_model(module: str) -> None:
    model, (x, ref) = tiny_int8_model()
    interp = _interpreter_class(module)(model_content=model, num_threads=1)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"] == (0.5, 3) and out["quantization"] == (0.5, -2)
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    y = interp.get_tensor(out["index"])
    assert np.array_equal(y, ref(x)), (module, y, ref(x))


def _needs_numpy1(module: str) -> bool:
    """tflite-runtime 2.14, its last release, is built against NumPy 1.x: with numpy 2 creating
    an interpreter fails ("_ARRAY_API not found"). The board keeps numpy<2 aside for it."""
    return module.startswith("tflite_runtime") and int(np.__version__.split(".")[0]) >= 2


def _run_checks(module: str, *checks: str) -> None:
    if not _needs_numpy1(module):
        for name in checks:
            globals()[name](module)
        return
    _interpreter_class(module)  # installed at all?
    site = os.environ.get("EDGE_SHITU_NUMPY1_SITE")
    if not site:
        pytest.skip("tflite-runtime 2.14 is compiled against NumPy 1.x and cannot run with numpy "
                    f"{np.__version__}; set EDGE_SHITU_NUMPY1_SITE to a folder with numpy<2")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_emu_board as t; "
            f"import numpy; assert numpy.__version__ < '2', numpy.__version__; "
            + "; ".join(f"t.{name}({module!r})" for name in checks))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{module} with numpy<2 from {site}:\n{r.stdout}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("module", INTERPRETERS)
def test_tflite_float_model_runs(module: str) -> None:
    _run_checks(module, "check_float_model")


@pytest.mark.parametrize("module", INTERPRETERS)
def test_tflite_int8_model_runs(module: str) -> None:
    _run_checks(module, "check_int8_model")


def test_tflite_runtime_needs_numpy1() -> None:
    """Pins the reason for the numpy<2 folder: when a tflite-runtime that works with numpy 2
    appears, this fails and the folder can go."""
    if not _needs_numpy1("tflite_runtime"):
        pytest.skip(f"numpy {np.__version__}")
    cls = _interpreter_class("tflite_runtime.interpreter")
    with pytest.raises((SystemError, ImportError)):
        cls(model_content=tiny_float_model()[0])


def test_tflite_rejects_a_corrupt_model() -> None:
    """The verifier runs: a truncated flatbuffer is refused, not read out of bounds."""
    if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is not None:
        # measured on the bullseye board: tflite-runtime 2.13 sometimes SEGFAULTS on a truncated model (it
        # reads the flatbuffer unverified); the runtime never hands it one: bundle files are sha256-checked
        pytest.skip("tflite-runtime does not verify a truncated model (LiteRT does); bundles are sha256-checked")
    cls = _interpreter_class(INTERPRETERS[0])
    with pytest.raises((ValueError, RuntimeError)):
        cls(model_content=tiny_float_model()[0][:100]).allocate_tensors()


# ============================================================================ the gallery index
# Every input is dyadic (k / 2^m, small), so float32 arithmetic is exact on every platform and
# the results must be identical bit for bit: codes, distances, ids, re-rank scores, file bytes.
def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _dyadic(rng: np.random.Generator, shape: tuple[int, ...], lo: int = -64, hi: int = 64) -> np.ndarray:
    return (rng.integers(lo, hi, size=shape) / 16).astype(np.float32)


def _search_record(index: Any, q: np.ndarray, k: int, rerank: int = 0) -> dict[str, Any]:
    dist, rows, scores = index.search_rows(q, k, rerank)
    ids = np.where(rows >= 0, np.asarray(index.data.ids, dtype=np.int64)[np.maximum(rows, 0)], -1)
    rec = {"distances": dist.tolist(), "ids": ids.tolist(),
           "labels": [[index.labels_of_rows([r])[0] if r >= 0 else None for r in row] for row in rows]}
    if scores is not None:
        rec["scores"] = [[float(s) for s in row] for row in scores]
    return rec


def _brute_force_check(index: Any, q: np.ndarray, rec: dict[str, Any]) -> None:
    """Distances and (distance, row) order against np.unpackbits: the device check that needs no host."""
    from edge_shitu.index_format import planes_to_rows

    d = index.data
    codes = planes_to_rows(d.planes, np.arange(d.count))
    live = ~d.deleted_mask()
    qc = index.hasher.encode(q)
    k = len(rec["ids"][0])
    for i in range(q.shape[0]):
        dist = np.unpackbits(codes ^ qc[i], axis=1).sum(axis=1)
        rows = np.flatnonzero(live)
        order = rows[np.lexsort((rows, dist[rows]))][:k]
        assert rec["distances"][i][: order.size] == dist[order].tolist()
        assert rec["ids"][i][: order.size] == d.ids[order].astype(np.int64).tolist()


def index_scenario(workdir: Path) -> dict[str, Any]:
    """Build, save, reopen (mmap), search, add, remove, compact; everything the device does.

    Returns JSON-able results; the same function runs on the host and on the emulated board.
    """
    from edge_shitu.gallery_index import GalleryIndex, edit_index_file
    from edge_shitu.index_format import IndexData, Method, rows_to_planes, write_index

    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    rng = np.random.default_rng(20240611)

    # A. 512-bit sign codes of L2-normalised features (PaddleClas's binarize), the small-gallery
    #    path (many queries, one distance matrix), then updates through the crash-safe writer.
    n, dim = 600, 512
    feats = _dyadic(rng, (n, dim))
    feats[300:310] = feats[7]  # exact duplicates: ties decided by row
    labels = [f"饮料{i % 37}" for i in range(n)]
    ids = np.arange(n, dtype=np.int64) * 7 + 1000
    path = workdir / "sign512.esidx"
    GalleryIndex.build(feats, labels, method="sign", ids=ids, meta={"source": "edge-shitu emu scenario"}).save(path)
    out["A.built.sha256"] = _sha(path)
    q = feats[[0, 7, 123, 599]].copy()
    q[:, :60] *= -1  # noisy copies of gallery rows
    q = np.vstack([q, _dyadic(rng, (2, dim))])
    g = GalleryIndex.open(path)
    out["A.kernel"] = g.kernel
    out["A.search"] = _search_record(g, q, k=12)
    out["A.search_one"] = _search_record(g, q[1:2], k=12)  # one query: the chunked scan
    _brute_force_check(g, q, out["A.search"])
    new = _dyadic(rng, (20, dim))
    with edit_index_file(path) as idx:
        out["A.added_ids"] = idx.add(new, ["新品"] * 20).tolist()
    with edit_index_file(path) as idx:
        out["A.removed"] = idx.remove([1000, 1007, int(ids[300]), out["A.added_ids"][3]])
    out["A.updated.sha256"] = _sha(path)
    g = GalleryIndex.open(path)
    out["A.updated.search"] = _search_record(g, np.vstack([q, new[:3]]), k=12)
    _brute_force_check(g, np.vstack([q, new[:3]]), out["A.updated.search"])
    with edit_index_file(path) as idx:
        out["A.compacted"] = idx.compact()
    out["A.compacted.sha256"] = _sha(path)
    g = GalleryIndex.open(path)
    out["A.compacted.search"] = _search_record(g, np.vstack([q, new[:3]]), k=12)
    out["A.info"] = {k: v for k, v in g.info().items() if k not in ("path", "kernel", "meta")}

    # B. re-ranking: integer features, no normalisation -> exact float32 scores
    xb = rng.integers(-3, 4, size=(300, 128)).astype(np.float32)
    gb = GalleryIndex.build(xb, [f"b{i % 9}" for i in range(300)], method="sign", normalize=False)
    gb.save(workdir / "rerank.esidx")
    gb = GalleryIndex.open(workdir / "rerank.esidx")
    out["B.rerank"] = _search_record(gb, xb[[3, 50, 299]] + rng.integers(-1, 2, size=(3, 128)), k=5, rerank=40)

    # C. a gallery above SMALL_GALLERY (16384 rows): the chunked per-query scan, with deletions
    nc = 20000
    xc = rng.integers(-1, 2, size=(nc, 128)).astype(np.float32)
    xc[nc - 50 :] = xc[5]
    gc = GalleryIndex.build(xc, ["c"] * nc, method="sign", normalize=False)
    gc.remove(list(range(0, nc, 97)))
    qc = np.vstack([xc[[5, 19999]], rng.integers(-1, 2, size=(2, 128)).astype(np.float32)])
    out["C.search"] = _search_record(gc, qc, k=25)
    _brute_force_check(gc, qc, out["C.search"])
    gc.save(workdir / "big.esidx")
    out["C.sha256"] = _sha(workdir / "big.esidx")

    # D. ITQ: query hashing (x - mean) @ P with exactly representable parameters
    dim_d, bits = 64, 128
    mean = (rng.integers(-8, 8, size=dim_d) / 64).astype(np.float32)
    proj = (rng.integers(-16, 16, size=(dim_d, bits)) / 32).astype(np.float32)
    xd = _dyadic(rng, (200, dim_d), -8, 8) * 4  # integers / 4
    z = (xd - mean) @ proj
    data = IndexData(bits=bits, dim=dim_d, method=Method.ITQ, planes=rows_to_planes(np.packbits(z > 0, axis=1)),
                     ids=np.arange(200, dtype=np.uint64), deleted=np.zeros(25, dtype=np.uint8),
                     label_of=np.arange(200, dtype=np.uint32) % 5, labels=list("vwxyz"), mean=mean, proj=proj,
                     normalize=False, next_id=200, generation=0, meta={})
    write_index(workdir / "itq.esidx", data)
    gd = GalleryIndex.open(workdir / "itq.esidx")
    qd = xd[[0, 1, 2]] + _dyadic(rng, (3, dim_d), -2, 2)
    out["D.codes"] = [c.hex() for c in map(bytes, gd.hasher.encode(qd))]
    out["D.search"] = _search_record(gd, qd, k=8, rerank=30)
    out["D.sha256"] = _sha(workdir / "itq.esidx")
    return out


def host_index_results(path: Path, queries: np.ndarray) -> dict[str, Any]:
    """Search an index file the HOST built (learned ITQ on real features): query codes + top-k."""
    from edge_shitu.gallery_index import GalleryIndex

    g = GalleryIndex.open(path)
    return {"codes": [bytes(c).hex() for c in g.hasher.encode(queries)], "search": _search_record(g, queries, k=5)}


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{where}.{k}")]
    if a != b:
        dev, host = (json.dumps(v, ensure_ascii=False)[:300] for v in (a, b))
        return [f"{where}: device {dev} != host {host}"]
    return []


@pytest.mark.parametrize("kernel", ["auto", "numpy"])
def test_index_build_mmap_search_update(kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: the native kernel when one is found (EDGE_SHITU_HAMMING_LIB), numpy otherwise."""
    monkeypatch.setenv("EDGE_SHITU_KERNEL", kernel)
    got = index_scenario(tmp_path)
    print(f"index kernel ({kernel}):", got["A.kernel"])
    if kernel == "numpy":
        assert got["A.kernel"].startswith("numpy")
    assert got["A.search"]["ids"][1][:11] == [1049] + [int(1000 + 7 * r) for r in range(300, 310)]
    assert got["A.removed"] == 4 and got["A.compacted"] == 4 and got["A.info"]["live"] == 616
    results: dict[str, Any] = {"board": board_info(), "scenario": got}
    expected_file = os.environ.get("EDGE_SHITU_EXPECTED")
    expected = json.loads(Path(expected_file).read_text("utf-8")) if expected_file else None
    if expected and "host_index" in expected:  # an index the host built and shipped to the device
        hi = expected["host_index"]
        queries = np.load(Path(expected_file).parent / hi["queries"])
        results["host_index"] = host_index_results(Path(expected_file).parent / hi["file"], queries)
    out_dir = os.environ.get("EDGE_SHITU_EMU_RESULTS")
    if out_dir:
        (Path(out_dir) / f"results-{kernel}.json").write_text(json.dumps(results, ensure_ascii=False, indent=1),
                                                              "utf-8")
    if expected:
        exp = {k: v for k, v in expected["scenario"].items() if k != "A.kernel"}
        diffs = _diff({k: v for k, v in got.items() if k != "A.kernel"}, exp)
        assert not diffs, f"{len(diffs)} differences from the host:\n" + "\n".join(diffs[:20])
