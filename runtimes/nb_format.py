"""A pure-Python reader for Paddle Lite ``.nb`` files (naive-buffer models, meta_version 1/2).

Why it exists: an arm ``.nb`` cannot be executed on an x86 host (Paddle Lite loads it without
error and returns garbage), so the converter must validate it STRUCTURALLY, and the x86 backend
must refuse to run it. Both need to look inside the file without Paddle Lite.

File layout (Paddle Lite >= 2.7, ``lite/model_parser/model_parser.cc``):

=========  ============  ===========================================
bytes      type          meaning
=========  ============  ===========================================
0..1       u16           meta_version (2 since 2.10; 1 = params as one flatbuffer)
2..17      char[16]      version of the opt that wrote it, NUL padded
18..25     u64           topo_size
26..       flatbuffer    ProgramDesc (``flatbuffers/framework.fbs``)
...        params        v2: u16 version, u16 meta_size, meta, u16 header_size,
                         {u16 count, u32 max_tensor_bytes}, then per param:
                         u32 total_size, u32 offset(=4), flatbuffer ParamDesc
=========  ============  ===========================================

Each op of an optimised program carries the attribute ``__@kernel_type_attr@__`` =
``"op/alias/target/precision/layout"`` naming the kernel opt picked: that is how an arm file is
told from an x86 one and an int8 conv from a float one.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edge_shitu.errors import CorruptFileError

# paddle_place.h enums, as stored in the kernel attribute.
TARGETS = {0: "unk", 1: "host", 2: "x86", 3: "cuda", 4: "arm", 5: "opencl", 6: "any", 7: "fpga",
           8: "npu", 9: "xpu", 10: "bm", 11: "mlu", 12: "rknpu", 13: "apu", 14: "huawei_ascend_npu",
           15: "imagination_nna", 16: "intel_fpga", 17: "metal", 18: "nnadapter"}
PRECISIONS = {0: "unk", 1: "float", 2: "int8", 3: "int32", 4: "any", 5: "fp16", 6: "bool",
              7: "int64", 8: "int16", 9: "uint8", 10: "fp64"}
# framework.fbs VarType_.Type -> bytes per element
DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1}
DTYPE_NAMES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32",
               6: "float64", 20: "uint8", 21: "int8"}
KERNEL_ATTR = "__@kernel_type_attr@__"
HEAD_BYTES = 26


class _Table:
    """Minimal flatbuffers table accessor (little-endian, offsets as in the flatbuffers spec)."""

    __slots__ = ("buf", "pos", "vlen", "vt")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vlen = struct.unpack_from("<H", buf, self.vt)[0]

    def _off(self, i: int) -> int:
        o = 4 + 2 * i
        return 0 if o >= self.vlen else struct.unpack_from("<H", self.buf, self.vt + o)[0]

    def scalar(self, i: int, fmt: str, default: int | float | bool = 0) -> int | float | bool:
        o = self._off(i)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0] if o else default

    def _target(self, i: int) -> Optional[int]:
        o = self._off(i)
        if not o:
            return None
        at = self.pos + o
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def string(self, i: int) -> Optional[str]:
        q = self._target(i)
        if q is None:
            return None
        n = struct.unpack_from("<I", self.buf, q)[0]
        return self.buf[q + 4:q + 4 + n].decode("utf-8", "replace")

    def table(self, i: int) -> Optional[_Table]:
        q = self._target(i)
        return None if q is None else _Table(self.buf, q)

    def _vec(self, i: int) -> tuple[int, int]:
        q = self._target(i)
        if q is None:
            return 0, 0
        return struct.unpack_from("<I", self.buf, q)[0], q + 4

    def tables(self, i: int) -> list[_Table]:
        n, q = self._vec(i)
        return [_Table(self.buf, q + 4 * k + struct.unpack_from("<I", self.buf, q + 4 * k)[0])
                for k in range(n)]

    def strings(self, i: int) -> list[str]:
        n, q = self._vec(i)
        out = []
        for k in range(n):
            e = q + 4 * k + struct.unpack_from("<I", self.buf, q + 4 * k)[0]
            m = struct.unpack_from("<I", self.buf, e)[0]
            out.append(self.buf[e + 4:e + 4 + m].decode("utf-8", "replace"))
        return out

    def scalars(self, i: int, fmt: str) -> list[int]:
        n, q = self._vec(i)
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, q)) if n else []

    def vector_span(self, i: int) -> tuple[int, int]:
        """(length, absolute start) of a vector field, for byte vectors."""
        return self._vec(i)


@dataclass(frozen=True)
class NbOp:
    type: str
    kernel: str  # e.g. "conv2d/def/4/1/1"; "" when opt recorded none
    target: str  # "arm", "x86", "host", "any", ...
    precision: str  # "float", "int8", "any", ...
    inputs: dict[str, list[str]] = field(default_factory=dict)
    outputs: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class NbParam:
    name: str
    dims: tuple[int, ...]
    dtype: str
    nbytes: int
    offset: int  # absolute file offset of the raw data


@dataclass
class NbModel:
    path: Path
    file_bytes: int
    meta_version: int
    opt_version: str
    topo_bytes: int
    ops: list[NbOp]
    var_dims: dict[str, tuple[int, ...]]
    persistable: list[str]
    params: dict[str, NbParam]
    inputs: list[str]
    outputs: list[str]

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.type for op in self.ops))

    @property
    def targets(self) -> dict[str, int]:
        """How many kernels run on each target (host/any kernels are target-neutral)."""
        return dict(Counter(op.target for op in self.ops))

    @property
    def compute_target(self) -> str:
        """The device the file was built for: the non-host target of its kernels ("" if none)."""
        ts = {op.target for op in self.ops} - {"host", "any", "unk", ""}
        return ",".join(sorted(ts))

    def int8_kernels(self) -> list[NbOp]:
        return [op for op in self.ops if op.precision == "int8" and op.type != "calib"]

    @property
    def param_bytes(self) -> int:
        return sum(p.nbytes for p in self.params.values())

    def read_param(self, name: str):  # -> np.ndarray, numpy imported lazily
        import numpy as np

        p = self.params[name]
        with open(self.path, "rb") as f:
            f.seek(p.offset)
            raw = f.read(p.nbytes)
        return np.frombuffer(raw, dtype=np.dtype(p.dtype)).reshape(p.dims)


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(f"{path} is not a valid Paddle Lite .nb file ({what}); re-run the converter")


def read_nb(path: str | os.PathLike[str]) -> NbModel:
    """Parse a ``.nb`` file completely (topology and every parameter header) or raise.

    Raises :class:`CorruptFileError` on a wrong magic/version, a truncated file, a parameter
    whose byte count disagrees with its shape, or trailing bytes.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < HEAD_BYTES:
        raise _corrupt(path, f"only {len(data)} bytes")
    meta, = struct.unpack_from("<H", data, 0)
    if meta not in (1, 2):
        raise _corrupt(path, f"meta_version {meta}, expected 1 or 2 (opt >= 2.7)")
    opt_version = data[2:18].split(b"\0", 1)[0].decode("ascii", "replace")
    if not opt_version.startswith("v"):
        raise _corrupt(path, f"opt version field {data[2:18]!r}")
    topo, = struct.unpack_from("<Q", data, 18)
    if HEAD_BYTES + topo > len(data):
        raise _corrupt(path, f"topology of {topo} bytes runs past the end")
    tb = data[HEAD_BYTES:HEAD_BYTES + topo]
    try:
        root = _Table(tb, struct.unpack_from("<I", tb, 0)[0])
        blocks = root.tables(0)
        if not blocks:
            raise _corrupt(path, "no blocks")
        b0 = blocks[0]
        var_dims: dict[str, tuple[int, ...]] = {}
        persistable: list[str] = []
        for v in b0.tables(2):
            name = v.string(0) or ""
            vt = v.table(1)
            lod = vt.table(2) if vt is not None else None
            td = lod.table(0) if lod is not None else None
            if td is not None:
                var_dims[name] = tuple(td.scalars(1, "q"))
            if v.scalar(2, "B") and name not in ("feed", "fetch"):
                persistable.append(name)
        ops: list[NbOp] = []
        inputs: list[tuple[int, str]] = []
        outputs: list[tuple[int, str]] = []
        for op in b0.tables(3):
            typ = op.string(0) or ""
            ins = {(v.string(0) or ""): v.strings(1) for v in op.tables(1)}
            outs = {(v.string(0) or ""): v.strings(1) for v in op.tables(2)}
            kernel, col = "", 0
            for a in op.tables(3):
                an = a.string(0)
                if an == KERNEL_ATTR:
                    kernel = a.string(4) or ""
                elif an == "col":
                    col = int(a.scalar(2, "i"))
            parts = kernel.split("/")
            target = precision = ""
            if len(parts) >= 5:
                try:
                    target = TARGETS.get(int(parts[-3]), parts[-3])
                    precision = PRECISIONS.get(int(parts[-2]), parts[-2])
                except ValueError:
                    pass
            ops.append(NbOp(typ, kernel, target, precision, ins, outs))
            if typ == "feed":
                inputs += [(col, n) for n in outs.get("Out", [])]
            elif typ == "fetch":
                outputs += [(col, n) for n in ins.get("X", [])]
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"unreadable topology: {e}") from e

    params: dict[str, NbParam] = {}
    p = HEAD_BYTES + topo
    try:
        if meta == 2:
            _pver, pmeta = struct.unpack_from("<HH", data, p)
            p += 4 + pmeta
            hsize, = struct.unpack_from("<H", data, p)
            count, _max_bytes = struct.unpack_from("<HI", data, p + 2)
            p += 2 + hsize
            for _ in range(count):
                total, off = struct.unpack_from("<II", data, p)
                start = p + 4 + off
                end = p + 4 + total
                if end > len(data) or off < 4:
                    raise _corrupt(path, "parameter record runs past the end")
                pb = data[start:end]
                pd = _Table(pb, struct.unpack_from("<I", pb, 0)[0])
                name = pd.string(1) or ""
                var = pd.table(3)
                if var is None:
                    raise _corrupt(path, f"parameter {name} has no tensor")
                dims = tuple(var.scalars(2, "q"))
                dt = int(var.scalar(3, "i"))
                n, q = var.vector_span(4)
                nel = 1
                for d in dims:
                    nel *= d
                if dt not in DTYPE_BYTES or nel * DTYPE_BYTES[dt] != n:
                    raise _corrupt(path, f"parameter {name}: {n} bytes for shape {dims} type {dt}")
                params[name] = NbParam(name, dims, DTYPE_NAMES[dt], n, start + q)
                p = end
            if p != len(data):
                raise _corrupt(path, f"{len(data) - p} unexpected trailing bytes")
        else:  # meta_version 1: one CombinedParamsDesc flatbuffer
            pb = data[p:]
            cp = _Table(pb, struct.unpack_from("<I", pb, 0)[0])
            for pd in cp.tables(0):
                name = pd.string(1) or ""
                var = pd.table(3)
                if var is None:
                    continue
                dims = tuple(var.scalars(2, "q"))
                dt = int(var.scalar(3, "i"))
                n, q = var.vector_span(4)
                params[name] = NbParam(name, dims, DTYPE_NAMES.get(dt, str(dt)), n, p + q)
    except struct.error as e:
        raise _corrupt(path, f"truncated parameters: {e}") from e

    missing = [n for n in persistable if n not in params]
    if missing:
        raise _corrupt(path, f"{len(missing)} persistable variables without data, e.g. {missing[:3]}")
    return NbModel(
        path=path, file_bytes=len(data), meta_version=meta, opt_version=opt_version,
        topo_bytes=topo, ops=ops, var_dims=var_dims, persistable=persistable, params=params,
        inputs=[n for _, n in sorted(inputs)], outputs=[n for _, n in sorted(outputs)],
    )
