"""Reading and checking a deployable bundle (spec: docs/bundle-format.md).

Device-side code: json + hashlib only. ``convert`` writes bundles through :func:`write_manifest`
and the same checks run on both sides, so a bundle that leaves the workstation is one the
device will accept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_shitu.errors import EdgeShituError, VersionError

FORMAT = "edge-shitu-bundle"
FORMAT_VERSION = (1, 0)
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    model: str  # "det" | "rec"
    kind: str  # "tflite:int8", "nb:arm:fp32", ...
    path: Path
    sha256: str
    bytes: int
    info: dict[str, Any]

    @property
    def format(self) -> str:
        return self.kind.split(":")[0]

    @property
    def precision(self) -> str:
        return self.kind.split(":")[-1]


class Bundle:
    """An opened bundle. Artifact checksums are verified when an artifact is requested."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        root = Path(path)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise EdgeShituError(f"{root}: not a bundle directory; make one with 'edge-shitu convert'")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EdgeShituError(f"{root}: no {MANIFEST}; this is not an edge-shitu bundle "
                                 "(make one with 'edge-shitu convert')") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgeShituError(f"{mpath}: not valid JSON ({e}); re-copy the bundle") from None
        check_manifest(manifest, mpath)
        return cls(root, manifest)

    # ---------------------------------------------------------------- content
    @property
    def has_detector(self) -> bool:
        return bool(self.manifest.get("det"))

    @property
    def index_path(self) -> Path:
        return self.root / self.manifest["index"]["file"]

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.manifest.get("runtime", {}))

    def model(self, which: str) -> dict[str, Any]:
        m = self.manifest.get(which)
        if not m:
            raise EdgeShituError(f"{self.root}: the bundle has no '{which}' model")
        return m

    def artifacts(self, which: str) -> list[Artifact]:
        return [Artifact(which, a["kind"], self.root / a["file"], a["sha256"], int(a["bytes"]), a)
                for a in self.model(which)["artifacts"]]

    def artifact(self, which: str, kind: str, verify: bool = True) -> Artifact:
        """The artifact of that kind, its checksum verified."""
        found = [a for a in self.artifacts(which) if a.kind == kind]
        if not found:
            have = ", ".join(a.kind for a in self.artifacts(which)) or "none"
            raise EdgeShituError(f"{self.root}: no {which} artifact of kind {kind} (the bundle has: {have}); "
                                 "pick another --backend/--precision or rebuild the bundle for this board")
        art = found[0]
        if verify:
            verify_file(art.path, art.sha256, art.bytes)
        return art

    def native_lib(self) -> Path | None:
        lib = self.manifest.get("native_lib")
        if not lib:
            return None
        p = self.root / lib["file"]
        verify_file(p, lib["sha256"], None)
        return p


def verify_file(path: Path, sha256: str, size: int | None) -> None:
    if not path.is_file():
        raise EdgeShituError(f"{path}: missing from the bundle; re-copy the bundle")
    if size is not None and path.stat().st_size != size:
        raise EdgeShituError(f"{path}: {path.stat().st_size} bytes but the manifest says {size}; the file is "
                             "truncated or replaced: re-copy the bundle")
    if sha256_file(path) != sha256:
        raise EdgeShituError(f"{path}: sha256 does not match manifest.json; the file is corrupt or was "
                             "replaced: re-copy the bundle")


def _need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], typ):
        raise EdgeShituError(f"{where}: key '{key}' missing or malformed; rebuild the bundle with 'edge-shitu convert'")
    return obj[key]


def check_manifest(m: Any, where: Path | str) -> None:
    """Structural checks shared by the writer (convert) and the readers."""
    where = str(where)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise EdgeShituError(f"{where}: not an edge-shitu bundle manifest (format != {FORMAT})")
    version = _need(m, "format_version", list, where)
    if len(version) != 2 or not all(isinstance(v, int) for v in version):
        raise EdgeShituError(f"{where}: format_version must be [major, minor]")
    if version[0] != FORMAT_VERSION[0]:
        raise VersionError(f"{where}: bundle format {version[0]}.{version[1]}; this edge-shitu reads "
                           f"{FORMAT_VERSION[0]}.x: upgrade edge-shitu on the device or rebuild the bundle")
    _need(m, "board", dict, where)
    index = _need(m, "index", dict, where)
    _need(index, "file", str, f"{where}: index")
    for which in ("det", "rec"):
        model = m.get(which)
        if model is None and which == "det":
            continue
        _need(m, which, dict, where)
        _need(model, "preprocess", dict, f"{where}: {which}")
        arts = _need(model, "artifacts", list, f"{where}: {which}")
        for i, a in enumerate(arts):
            w = f"{where}: {which}.artifacts[{i}]"
            for key, typ in (("kind", str), ("file", str), ("sha256", str), ("bytes", int)):
                _need(a, key, typ, w)
            if Path(a["file"]).is_absolute() or ".." in Path(a["file"]).parts:
                raise EdgeShituError(f"{w}: file must be a path inside the bundle, got {a['file']}")


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Validate then write (the caller writes the bundle into a temporary directory)."""
    check_manifest(manifest, root / MANIFEST)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def artifact_entry(root: Path, file: Path, kind: str, **info: Any) -> dict[str, Any]:
    """A manifest artifact entry for a file already inside the bundle directory."""
    rel = file.relative_to(root).as_posix()
    return {"kind": kind, "file": rel, "sha256": sha256_file(file), "bytes": file.stat().st_size, **info}
