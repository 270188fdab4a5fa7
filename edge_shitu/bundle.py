"""Reading and checking a deployable bundle (spec: docs/bundle-format.md).

Device-side code: json + hashlib (+ the preprocess classes a bundle is run with). ``convert``
writes bundles through :func:`write_manifest` and the same checks run on both sides, so a
bundle that leaves the workstation is one the device will accept.

Two rules hold for every manifest a reader opens:

- its values match the one schema (``edge_shitu/manifest_schema.py``): a wrong hand-edited
  value is one line naming the key (exit 2), never a traceback;
- every path it names goes through :func:`resolve_in_bundle`: relative, no ``..``, no symlink
  that leads out of the bundle, the native library only from ``lib/``. Nothing outside the
  bundle is read, written or loaded because of what a manifest says.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any, Optional

from edge_shitu.errors import EdgeShituError, VersionError
from edge_shitu.formats import Artifact
from edge_shitu.manifest_schema import ManifestError, manifest_paths, path_problem, validate

FORMAT = "edge-shitu-bundle"
FORMAT_VERSION = (1, 0)
MANIFEST = "manifest.json"
LIB_DIR = "lib"  # the only folder a native library is loaded from


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _show(value: Any) -> str:
    s = json.dumps(value, ensure_ascii=False) if isinstance(value, (str, int, float, type(None))) else repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


def resolve_in_bundle(root: str | Path, rel: Any, key: str, *, under: str = "",
                      where: Optional[str] = None) -> Path:
    """THE way to turn a path a manifest names into a file: the resolved path inside ``root``.

    Refused with one line naming ``key`` (e.g. ``index.file``): anything but a relative path,
    absolute paths, ``..``, a path that resolves (through symlinks, at any depth) outside the
    bundle or, with ``under="lib"``, outside the bundle's ``lib/`` folder, and an existing
    entry that is not a regular file (FIFO, device, directory: opening it could block). A
    missing file is not an error here: the caller says what is missing. ``where`` names the
    manifest in the message (default ``ROOT/manifest.json``).
    """
    where = where or str(Path(root) / MANIFEST)
    inside = f"the bundle's {under}/ folder" if under else "the bundle"
    why = path_problem(rel, under)
    if why is not None:
        raise EdgeShituError(f"{where}: {key} must be a relative path inside {inside} (no '..'), got {_show(rel)} "
                             f"({why}); fix the manifest or rebuild the bundle")
    try:
        base = Path(root).resolve(strict=True)
        p = (base / rel).resolve(strict=False)
    except (OSError, RuntimeError) as e:  # RuntimeError: symlink loop (Python < 3.13)
        raise EdgeShituError(f"{where}: {key} {_show(rel)} cannot be resolved ({e}); re-copy the bundle") from None
    limit = base / under if under else base
    if p == limit or limit not in p.parents:  # not Path.is_relative_to: 3.9+, the runtime supports 3.8
        raise EdgeShituError(f"{where}: {key} {_show(rel)} leads out of {inside} through a symlink (to {p}); "
                             "refused: re-copy the bundle without links that point outside it")
    try:
        st = p.stat()
    except FileNotFoundError:
        return p
    except OSError as e:
        raise EdgeShituError(f"{where}: {key} {_show(rel)} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise EdgeShituError(f"{where}: {key} {_show(rel)} is not a regular file ({_kind_of(st.st_mode)}); "
                             "re-copy the bundle")
    return p


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


class Bundle:
    """An opened bundle. Artifact checksums are verified when an artifact is requested."""

    def __init__(self, root: Path, manifest: dict[str, Any], built: dict[str, Any] | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self._built = built if built is not None else check_manifest(manifest, root / MANIFEST)

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Read and validate ``manifest.json`` (schema, every path, the preprocessing); one line
        (:class:`EdgeShituError`, exit 2) for anything wrong."""
        root = Path(path)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise EdgeShituError(f"{root}: not a bundle directory; make one with 'edge-shitu convert'")
        try:
            st = mpath.stat()
        except FileNotFoundError:
            raise EdgeShituError(f"{root}: no {MANIFEST}; this is not an edge-shitu bundle "
                                 "(make one with 'edge-shitu convert')") from None
        except OSError as e:
            raise EdgeShituError(f"{mpath}: cannot be read ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise EdgeShituError(f"{mpath}: is {_kind_of(st.st_mode)}, not a file; re-copy the bundle")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # ValueError: JSONDecodeError, huge ints
            raise EdgeShituError(f"{mpath}: not valid JSON ({type(e).__name__}: {str(e)[:200]}); "
                                 "re-copy the bundle") from None
        except OSError as e:
            raise EdgeShituError(f"{mpath}: cannot be read ({e.strerror or e})") from None
        b = cls(root, manifest, check_manifest(manifest, mpath))
        b.paths()  # every path resolved now: a bundle pointing outside itself is refused at once
        return b

    # ---------------------------------------------------------------- paths
    def resolve(self, rel: Any, key: str, under: str = "") -> Path:
        """:func:`resolve_in_bundle` for this bundle."""
        return resolve_in_bundle(self.root, rel, key, under=under, where=str(self.root / MANIFEST))

    def paths(self) -> dict[str, Path]:
        """Every path the manifest names, resolved and checked, by key (``index.file``,
        ``rec.artifacts[0].file``, ``native_lib.file``, ...)."""
        return {key: self.resolve(rel, key, under) for key, rel, under in manifest_paths(self.manifest)}

    # ---------------------------------------------------------------- content
    @property
    def has_detector(self) -> bool:
        return bool(self.manifest.get("det"))

    @property
    def index_path(self) -> Path:
        return self.resolve(self.manifest["index"]["file"], "index.file")

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.manifest.get("runtime") or {})

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["rec"]["feature_dim"])

    @property
    def max_image_pixels(self) -> Optional[int]:
        """The board's pixel budget for decoding photos (``board.max_image_pixels``), or None:
        then ``preprocess.DEFAULT_MAX_PIXELS``. Pass it as ``load_image(path, max_pixels=...)``."""
        v = (self.manifest.get("board") or {}).get("max_image_pixels")
        return int(v) if v is not None else None

    def preprocess(self, which: str) -> Any:
        """The ``RecPreprocess`` ("rec") or ``DetPreprocess`` ("det") built from the manifest when
        it was checked (one build per bundle)."""
        self.model(which)  # one line when the bundle has no such model
        return self._built[f"{which}.preprocess"]

    def model(self, which: str) -> dict[str, Any]:
        m = self.manifest.get(which)
        if not m:
            raise EdgeShituError(f"{self.root}: the bundle has no '{which}' model")
        return m

    def artifacts(self, which: str) -> list[Artifact]:
        return [Artifact(a["kind"], self.resolve(a["file"], f"{which}.artifacts[{i}].file"), int(a["bytes"]),
                         a["sha256"], which, details=dict(a.get("details") or {}), info=a)
                for i, a in enumerate(self.model(which)["artifacts"])]

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
        """The bundle's native Hamming kernel (only ever from its ``lib/``), checksum verified."""
        lib = self.manifest.get("native_lib")
        if not lib:
            return None
        p = self.resolve(lib["file"], "native_lib.file", under=LIB_DIR)
        verify_file(p, lib["sha256"], None)
        return p

    def check_index(self, index: Any = None) -> None:
        """Refuse the bundle (one line, exit 2) when its index does not hold the extractor's
        features: the index's dim != ``rec.feature_dim``, or an extractor artifact declares a
        single ``[batch, dim]`` output of another size. ``index``: an opened ``GalleryIndex``
        (default: the bundle's index, opened without the full CRC pass: only its header is
        needed)."""
        dim = self.feature_dim
        where = self.root / MANIFEST
        for i, a in enumerate(self.model("rec")["artifacts"]):
            outs = a.get("outputs") or []
            shape = outs[0].get("shape") if len(outs) == 1 and isinstance(outs[0], dict) else None
            last = shape[-1] if isinstance(shape, list) and len(shape) == 2 else None  # [batch, dim] only
            if isinstance(last, int) and not isinstance(last, bool) and last > 0 and last != dim:
                raise EdgeShituError(f"{where}: rec.artifacts[{i}] ({a['kind']}) outputs {last}-d features but "
                                     f"rec.feature_dim is {dim}; fix the manifest or rebuild the bundle")
        if index is None:
            from edge_shitu.gallery_index import GalleryIndex

            index = GalleryIndex.open(self.index_path, verify=False)
        if int(index.dim) != dim:
            raise EdgeShituError(f"{self.index_path}: the index holds {index.dim}-d features but the bundle's "
                                 f"extractor gives {dim}-d (rec.feature_dim): the index belongs to another "
                                 "extractor; re-copy the bundle or rebuild its index")


def verify_file(path: Path, sha256: str, size: int | None) -> None:
    if not path.is_file():
        raise EdgeShituError(f"{path}: missing from the bundle; re-copy the bundle")
    if size is not None and path.stat().st_size != size:
        raise EdgeShituError(f"{path}: {path.stat().st_size} bytes but the manifest says {size}; the file is "
                             "truncated or replaced: re-copy the bundle")
    if sha256_file(path) != sha256.lower():
        raise EdgeShituError(f"{path}: sha256 does not match manifest.json; the file is corrupt or was "
                             "replaced: re-copy the bundle")


def check_manifest(m: Any, where: Path | str) -> dict[str, Any]:
    """The checks shared by the writer (convert) and the readers: format, version, then the
    schema (types and ranges of every key the runtime reads, paths lexically inside the bundle)
    and the preprocessing the runtime will build from it, which is returned by key
    (``rec.preprocess``, ``det.preprocess``)."""
    where = str(where)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise EdgeShituError(f"{where}: not an edge-shitu bundle manifest (format != {FORMAT})")
    version = m.get("format_version")
    if not (isinstance(version, list) and len(version) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in version)):
        raise ManifestError(f"{where}: format_version must be [major, minor], got {_show(version)}; "
                            "re-copy the bundle or rebuild it with 'edge-shitu convert'")
    if version[0] != FORMAT_VERSION[0]:
        raise VersionError(f"{where}: bundle format {version[0]}.{version[1]}; this edge-shitu reads "
                           f"{FORMAT_VERSION[0]}.x: upgrade edge-shitu on the device or rebuild the bundle")
    validate(m, where)
    return _check_preprocess(m, where)


def _check_preprocess(m: dict[str, Any], where: str) -> dict[str, Any]:
    """Build what the runtime builds from the manifest, so that anything the schema lets through
    but the runtime would refuse is still one line naming the key, at open time; the built
    objects are returned by key, for the runtime to use instead of building them again."""
    from edge_shitu.detection import PicoDetHead
    from edge_shitu.gfl_head import GFLHead
    from edge_shitu.preprocess import DetPreprocess, RecPreprocess

    checks: list[tuple[str, Any, Any]] = [("rec.preprocess", RecPreprocess.from_dict, m["rec"]["preprocess"])]
    if m.get("det"):
        checks.append(("det.preprocess", DetPreprocess.from_dict, m["det"]["preprocess"]))
        for i, a in enumerate(m["det"]["artifacts"]):
            head = (a.get("details") or {}).get("head")
            if head:
                build = GFLHead.from_dict if isinstance(head, dict) and head.get("type") == "gfl" \
                    else PicoDetHead.from_dict
                checks.append((f"det.artifacts[{i}].details.head", build, head))
    built: dict[str, Any] = {}
    for key, build, value in checks:
        try:
            built[key] = build(value)
        except EdgeShituError as e:
            raise ManifestError(f"{where}: {key}: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ManifestError(f"{where}: {key} is not usable ({type(e).__name__}: {e}); fix the file or "
                                "rebuild the bundle with 'edge-shitu convert'") from None
    return built


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Validate (the readers' checks, paths resolved inside ``root``) then write (the caller
    writes the bundle into a temporary directory)."""
    where = root / MANIFEST
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    as_read = json.loads(text)  # checked as a reader will see it (tuples are lists there)
    check_manifest(as_read, where)
    for key, rel, under in manifest_paths(as_read):
        resolve_in_bundle(root, rel, key, under=under, where=str(where))
    where.write_text(text, encoding="utf-8")


def artifact_entry(root: Path, file: Path, kind: str, **info: Any) -> dict[str, Any]:
    """A manifest artifact entry for a file already inside the bundle directory."""
    rel = file.relative_to(root).as_posix()
    return {"kind": kind, "file": rel, "sha256": sha256_file(file), "bytes": file.stat().st_size, **info}
