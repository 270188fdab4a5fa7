"""Which TFLite runtime version a ``.tflite`` file needs, from the op versions it contains.

A TFLite model lists its operators as (builtin op code, version) pairs; a runtime registers each
op only up to the versions it knows, and refuses a model with a newer one ("Didn't find op for
builtin opcode 'FULLY_CONNECTED' version '12'"). TensorFlow keeps the table of the runtime
version that introduced each (op, version) in ``tensorflow/compiler/mlir/lite/tools/versioning/
runtime_version.cc`` (``FindMinimumRuntimeVersionForOp``); :data:`OP_MIN_RUNTIME` is that table
(TF 2.19/2.20 sources, ops up to version 2.18.0), by op code. The converter also writes its own
answer into the model's ``min_runtime_version`` metadata; both are read and the larger one wins.

Used on the workstation (``converters/board_runtime.py``: a board's oldest runtime must load every
TFLite artifact) and on the device (``runtimes/tflite_backend.py``: a bundle that needs a newer
runtime than the installed one is refused in one line at open, not by a crash at inference).
Standard library only: devices run it under Python 3.8.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional, Tuple, Union  # Tuple: an alias evaluated at import (Python 3.8)

from edge_shitu.errors import EdgeShituError

Version = Tuple[int, ...]

# op code -> (name, "min runtime of version 1, of version 2, ..."); "-" for a version never released.
OP_MIN_RUNTIME: dict[int, tuple[str, str]] = {
    0: ("ADD", "1.5 1.14 2.4 2.6 2.13"),
    1: ("AVERAGE_POOL_2D", "1.5 1.14 2.3"),
    2: ("CONCATENATION", "1.5 1.14 2.3 2.14"),
    3: ("CONV_2D", "1.5 1.14 1.14 2.3 2.4 2.9 2.11 2.15"),
    4: ("DEPTHWISE_CONV_2D", "1.5 1.12 1.14 2.2 2.3 2.3 2.11"),
    5: ("DEPTH_TO_SPACE", "2.1 2.5"),
    6: ("DEQUANTIZE", "1.13.1 1.14 1.15 2.2 2.7 2.18"),
    7: ("EMBEDDING_LOOKUP", "1.13 1.14 1.14 2.18"),
    8: ("FLOOR", "1.9"),
    9: ("FULLY_CONNECTED", "1.5 1.10 1.14 1.14 2.0 2.1 2.3 2.3 2.3 2.11 2.15 2.17 2.18"),
    10: ("HASHTABLE_LOOKUP", "1.5"),
    11: ("L2_NORMALIZATION", "1.5 1.14"),
    12: ("L2_POOL_2D", "1.5"),
    13: ("LOCAL_RESPONSE_NORMALIZATION", "1.5"),
    14: ("LOGISTIC", "1.14 1.14 2.3"),
    15: ("LSH_PROJECTION", "1.5"),
    16: ("LSTM", "1.7 1.10 1.14 2.3"),
    17: ("MAX_POOL_2D", "1.5 1.14 2.3"),
    18: ("MUL", "1.5 1.14 1.15 2.3 2.6 2.11 2.13"),
    19: ("RELU", "1.5 2.1 2.5"),
    20: ("RELU_N1_TO_1", "1.5"),
    21: ("RELU6", "1.5 1.14 2.5"),
    22: ("RESHAPE", "1.5"),
    23: ("RESIZE_BILINEAR", "1.7 1.14 2.2 2.5"),
    24: ("RNN", "1.5 1.14 2.3"),
    25: ("SOFTMAX", "1.5 1.14 2.3"),
    26: ("SPACE_TO_DEPTH", "1.5 1.14"),
    27: ("SVDF", "1.5 1.14 2.2 2.3"),
    28: ("TANH", "1.14 1.14 2.3"),
    30: ("SKIP_GRAM", "1.5"),
    33: ("EMBEDDING_LOOKUP_SPARSE", "1.5"),
    34: ("PAD", "1.5 1.14 2.4 2.6"),
    35: ("UNIDIRECTIONAL_SEQUENCE_RNN", "1.14 1.14 2.3"),
    36: ("GATHER", "1.6 1.14 1.15 2.4 2.5 2.13 2.15"),
    37: ("BATCH_TO_SPACE_ND", "1.6 1.14 2.3 2.12"),
    38: ("SPACE_TO_BATCH_ND", "1.6 1.14 2.3 2.12"),
    39: ("TRANSPOSE", "1.6 1.14 1.15 2.3 2.4 2.12"),
    40: ("MEAN", "1.6 1.14 2.4"),
    41: ("SUB", "1.6 1.14 2.3 2.4 2.4"),
    42: ("DIV", "1.6 2.3"),
    43: ("SQUEEZE", "1.6 2.5"),
    44: ("UNIDIRECTIONAL_SEQUENCE_LSTM", "1.13.1 1.14 2.3 2.12"),
    45: ("STRIDED_SLICE", "1.6 1.14 2.1 2.2 2.5 2.6 2.14 2.14"),
    46: ("BIDIRECTIONAL_SEQUENCE_RNN", "1.14 1.14 2.3"),
    47: ("EXP", "1.7 2.12"),
    48: ("TOPK_V2", "1.7 1.14 2.13"),
    49: ("SPLIT", "1.5 1.14 1.14 2.3"),
    50: ("LOG_SOFTMAX", "1.14 1.14"),
    52: ("BIDIRECTIONAL_SEQUENCE_LSTM", "1.14 1.14 1.14"),
    53: ("CAST", "1.5 2.7 2.8 2.9 2.12 2.15"),
    54: ("PRELU", "1.8"),
    55: ("MAXIMUM", "1.14 1.14 2.3 2.3"),
    56: ("ARG_MAX", "1.9 1.14 2.9"),
    57: ("MINIMUM", "1.14 1.14 2.3 2.3"),
    58: ("LESS", "1.14 1.14 2.13"),
    59: ("NEG", "1.9"),
    60: ("PADV2", "1.9 1.14 2.4 2.6"),
    61: ("GREATER", "1.14 1.14"),
    62: ("GREATER_EQUAL", "1.14 1.14 2.13"),
    63: ("LESS_EQUAL", "1.14 1.14"),
    64: ("SELECT", "1.14 1.14 2.12 2.12"),
    65: ("SLICE", "1.14 1.14 1.14 2.4 2.5 2.14"),
    66: ("SIN", "1.9"),
    67: ("TRANSPOSE_CONV", "1.9 2.2 2.3 2.13 2.15"),
    68: ("SPARSE_TO_DENSE", "1.9 1.14 1.15"),
    69: ("TILE", "1.10.1 2.2 2.8"),
    70: ("EXPAND_DIMS", "1.10"),
    71: ("EQUAL", "1.14 1.14 2.3 2.13"),
    72: ("NOT_EQUAL", "1.14 1.14 2.3"),
    73: ("LOG", "1.14 2.15"),
    74: ("SUM", "1.10 1.15"),
    75: ("SQRT", "1.10"),
    76: ("RSQRT", "1.10 2.5 2.15"),
    77: ("SHAPE", "1.10"),
    78: ("POW", "1.10"),
    79: ("ARG_MIN", "1.9 1.14 2.9"),
    80: ("FAKE_QUANT", "1.5 1.10"),
    81: ("REDUCE_PROD", "1.11 2.6"),
    82: ("REDUCE_MAX", "1.11 1.14 2.5"),
    83: ("PACK", "1.11 1.14 2.3 2.13"),
    84: ("LOGICAL_OR", "1.11"),
    85: ("ONE_HOT", "1.11"),
    86: ("LOGICAL_AND", "1.11"),
    87: ("LOGICAL_NOT", "1.11"),
    88: ("UNPACK", "1.11 1.14 2.2 2.3"),
    89: ("REDUCE_MIN", "1.11 1.14 2.5"),
    90: ("FLOOR_DIV", "1.14 1.14 2.13"),
    91: ("REDUCE_ANY", "1.11"),
    92: ("SQUARE", "1.12"),
    93: ("ZEROS_LIKE", "1.12"),
    94: ("FILL", "1.13 2.3 2.5 2.12"),
    95: ("FLOOR_MOD", "1.13 2.13"),
    96: ("RANGE", "1.13 2.14"),
    97: ("RESIZE_NEAREST_NEIGHBOR", "1.13.1 1.14 2.3 2.4"),
    98: ("LEAKY_RELU", "1.13.1 2.3"),
    99: ("SQUARED_DIFFERENCE", "1.13.1 2.5"),
    100: ("MIRROR_PAD", "1.13.1 2.3 2.12"),
    101: ("ABS", "1.13 2.4 2.5 2.6 2.12"),
    102: ("SPLIT_V", "1.13.1 2.3"),
    103: ("UNIQUE", "1.14"),
    104: ("CEIL", "1.14"),
    105: ("REVERSE_V2", "1.14 2.2 2.5"),
    106: ("ADD_N", "1.14"),
    107: ("GATHER_ND", "1.14 2.3 2.5 2.13 2.16"),
    108: ("COS", "1.14"),
    109: ("WHERE", "1.14 2.8"),
    110: ("RANK", "1.14"),
    111: ("ELU", "1.14"),
    112: ("REVERSE_SEQUENCE", "1.14"),
    113: ("MATRIX_DIAG", "1.14"),
    114: ("QUANTIZE", "1.14 1.15 2.7"),
    115: ("MATRIX_SET_DIAG", "1.14"),
    116: ("ROUND", "1.14"),
    117: ("HARD_SWISH", "1.15"),
    118: ("IF", "1.15"),
    119: ("WHILE", "1.15"),
    120: ("NON_MAX_SUPPRESSION_V4", "2.1"),
    121: ("NON_MAX_SUPPRESSION_V5", "2.1"),
    122: ("SCATTER_ND", "2.1"),
    123: ("SELECT_V2", "2.2 2.12"),
    124: ("DENSIFY", "2.2"),
    125: ("SEGMENT_SUM", "2.2"),
    126: ("BATCH_MATMUL", "2.3 2.3 2.4 2.5"),
    128: ("CUMSUM", "2.4"),
    129: ("CALL_ONCE", "2.5"),
    130: ("BROADCAST_TO", "- 2.5 2.5"),
    131: ("RFFT2D", "2.5"),
    132: ("CONV_3D", "2.5"),
    133: ("IMAG", "2.5"),
    134: ("REAL", "2.5"),
    135: ("COMPLEX_ABS", "2.5"),
    136: ("HASHTABLE", "2.5"),
    137: ("HASHTABLE_FIND", "2.5"),
    138: ("HASHTABLE_IMPORT", "2.5"),
    139: ("HASHTABLE_SIZE", "2.5"),
    140: ("REDUCE_ALL", "2.6"),
    141: ("CONV_3D_TRANSPOSE", "2.6"),
    142: ("VAR_HANDLE", "2.6"),
    143: ("READ_VARIABLE", "2.6"),
    144: ("ASSIGN_VARIABLE", "2.6"),
    145: ("BROADCAST_ARGS", "2.6"),
    146: ("RANDOM_STANDARD_NORMAL", "2.8"),
    147: ("BUCKETIZE", "2.8"),
    148: ("RANDOM_UNIFORM", "2.8"),
    149: ("MULTINOMIAL", "2.8"),
    150: ("GELU", "2.9 2.9"),
    151: ("DYNAMIC_UPDATE_SLICE", "2.9 2.17"),
    152: ("RELU_0_TO_1", "2.10"),
    153: ("UNSORTED_SEGMENT_PROD", "2.10"),
    154: ("UNSORTED_SEGMENT_MAX", "2.10"),
    155: ("UNSORTED_SEGMENT_SUM", "2.10"),
    156: ("ATAN2", "2.10"),
    157: ("UNSORTED_SEGMENT_MIN", "2.11"),
    158: ("SIGN", "2.11 2.12"),
    159: ("BITCAST", "2.13"),
    160: ("BITWISE_XOR", "2.13"),
    161: ("RIGHT_SHIFT", "2.13"),
    163: ("STABLEHLO_ADD", "2.16"),
    165: ("STABLEHLO_MULTIPLY", "2.16"),
    166: ("STABLEHLO_MAXIMUM", "2.16"),
    176: ("STABLEHLO_AND", "2.17"),
    181: ("STABLEHLO_MINIMUM", "2.16"),
    190: ("STABLEHLO_SCATTER", "2.15"),
    195: ("STABLEHLO_PAD", "2.16"),
    198: ("STABLEHLO_REDUCE_WINDOW", "2.16"),
    201: ("STABLEHLO_GATHER", "2.16"),
    203: ("DILATE", "2.15"),
    204: ("STABLEHLO_RNG_BIT_GENERATOR", "2.15"),
    205: ("REDUCE_WINDOW", "2.15"),
    206: ("STABLEHLO_COMPOSITE", "2.17"),
    207: ("STABLEHLO_SHIFT_LEFT", "2.17"),
    208: ("STABLEHLO_CBRT", "2.17"),
    209: ("STABLEHLO_CASE", "2.17"),
}

# ai-edge-litert (LiteRT) is numbered on its own (1.x, 2.x); the TFLite op level of its releases:
# 1.0 was cut from TF 2.18's tree, 1.2-1.4 from 2.19/2.20, 2.x from 2.20+. Everything in the table
# (up to 2.18) loads on any of them; a version of 0.x does not exist.
LITERT_OP_LEVEL: list[tuple[Version, Version]] = [((1, 0), (2, 18)), ((1, 2), (2, 19)), ((2, 0), (2, 20))]

# the runtimes a board may name (board_configs/*.json "runtime.name"), and the pip package of each
TFLITE_RUNTIMES = ("tflite-runtime", "ai-edge-litert")
PADDLELITE = "paddlelite"
RUNTIME_NAMES = (*TFLITE_RUNTIMES, PADDLELITE)
CUSTOM = 32  # BuiltinOperator_CUSTOM: a custom op, never versioned by the table
AFTER_TABLE: Version = (2, 19)  # what an (op, version) unknown to the table is taken to need


def parse_version(text: str) -> Version:
    """'2.13.0' -> (2, 13, 0); '2.14.0rc1' -> (2, 14, 0); raises ValueError on anything else."""
    parts: list[int] = []
    for piece in str(text).strip().split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts)


def show(v: Version) -> str:
    return ".".join(str(x) for x in (*v, 0, 0)[: max(3, len(v))])


def op_level(runtime: str, version: Union[str, Version]) -> Version:
    """The TFLite (TensorFlow) version whose op registry a runtime release carries."""
    v = parse_version(version) if isinstance(version, str) else tuple(version)
    if runtime == "ai-edge-litert":
        level: Version = (2, 17)
        for first, lvl in LITERT_OP_LEVEL:
            if v[: len(first)] >= first:
                level = lvl
        return level
    return (*v, 0)[:2]


# ---------------------------------------------------------------- a tiny FlatBuffers reader
class _Reader:
    def __init__(self, buf: bytes, where: str) -> None:
        self.b, self.where = buf, where

    def _u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > len(self.b):
            raise EdgeShituError(f"{self.where} is not a valid TFLite model (truncated flatbuffer); "
                                 "re-copy or re-convert it")
        return struct.unpack_from("<I", self.b, pos)[0]

    def table(self, pos: int) -> int:
        return pos

    def field(self, table: int, slot: int) -> Optional[int]:
        """Absolute position of a table's field, or None when absent."""
        vt = table - struct.unpack("<i", struct.pack("<I", self._u32(table)))[0]
        if vt < 0 or vt + 4 > len(self.b):
            self._u32(len(self.b))  # raises
        vt_size = struct.unpack_from("<H", self.b, vt)[0]
        if 4 + 2 * slot + 2 > vt_size:
            return None
        off = struct.unpack_from("<H", self.b, vt + 4 + 2 * slot)[0]
        return table + off if off else None

    def scalar(self, table: int, slot: int, fmt: str, default: int) -> int:
        p = self.field(table, slot)
        if p is None:
            return default
        if p + struct.calcsize(fmt) > len(self.b):
            self._u32(len(self.b))
        return struct.unpack_from(fmt, self.b, p)[0]

    def ref(self, table: int, slot: int) -> Optional[int]:
        p = self.field(table, slot)
        return None if p is None else p + self._u32(p)

    def vector(self, table: int, slot: int) -> tuple[int, int]:
        """(start of elements, count) of a vector field; (0, 0) when absent."""
        p = self.ref(table, slot)
        if p is None:
            return 0, 0
        n = self._u32(p)
        if n > len(self.b):
            self._u32(len(self.b))
        return p + 4, n

    def tables(self, table: int, slot: int) -> list[int]:
        start, n = self.vector(table, slot)
        return [start + 4 * i + self._u32(start + 4 * i) for i in range(n)]

    def string(self, table: int, slot: int) -> Optional[str]:
        p = self.ref(table, slot)
        if p is None:
            return None
        n = self._u32(p)
        return bytes(self.b[p + 4 : p + 4 + n]).decode("utf-8", "replace")


def _model(data: bytes, where: str) -> tuple[_Reader, int]:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise EdgeShituError(f"{where} is not a TFLite model (no TFL3 identifier); re-copy or re-convert it")
    r = _Reader(data, where)
    return r, r._u32(0)


def op_codes(data: bytes, where: str = "model") -> list[tuple[int, int, str]]:
    """The (builtin code, version, custom name) of every operator code the model lists."""
    r, model = _model(data, where)
    out = []
    for oc in r.tables(model, 1):  # Model.operator_codes
        deprecated = r.scalar(oc, 0, "<b", 0)  # OperatorCode.deprecated_builtin_code (int8)
        custom = r.string(oc, 1) or ""
        version = r.scalar(oc, 2, "<i", 1)
        builtin = r.scalar(oc, 3, "<i", 0)
        out.append((max(deprecated, builtin), version, custom))  # schema_utils.cc GetBuiltinCode
    return out


def metadata_min_runtime(data: bytes, where: str = "model") -> Optional[Version]:
    """The converter's own ``min_runtime_version`` metadata, when the model carries one."""
    r, model = _model(data, where)
    buffers = r.tables(model, 4)  # Model.buffers
    for md in r.tables(model, 6):  # Model.metadata
        if r.string(md, 0) != "min_runtime_version":
            continue
        idx = r.scalar(md, 1, "<I", 0)
        if idx >= len(buffers):
            return None
        start, n = r.vector(buffers[idx], 0)
        text = bytes(data[start : start + n]).split(b"\0", 1)[0].decode("ascii", "replace")
        try:
            return parse_version(text) if text else None
        except ValueError:
            return None
    return None


def required_runtime(data: bytes, where: str = "model") -> tuple[Version, str]:
    """The oldest TFLite runtime (op level) that loads the model, and why: ((2, 17), 'FULLY_CONNECTED
    version 12'). (1, 5) and '' for a model of only ancient ops."""
    need: Version = (1, 5)
    why = ""
    for code, version, _custom in op_codes(data, where):
        if code == CUSTOM:
            continue
        name, levels = OP_MIN_RUNTIME.get(code, (f"op {code}", ""))
        lv = levels.split()
        if code not in OP_MIN_RUNTIME or version > len(lv) or lv[version - 1] == "-":
            # an op (or op version) the table does not know: newer than 2.18, the last runtime it covers
            v: Version = AFTER_TABLE
            label = f"{name} version {version}, newer than TFLite 2.18's op table"
        else:
            v, label = parse_version(lv[version - 1]), f"{name} version {version}"
        if v > need:
            need, why = v, label
    meta = metadata_min_runtime(data, where)
    if meta is not None and meta[:2] > need[:2]:
        need, why = meta[:2], f"the converter's min_runtime_version {show(meta)}"
    return need[:2], why


def check_loadable(path: Union[str, Path], runtime: str, version: str, *, data: Optional[bytes] = None,
                   context: str = "installed here", advice: str = "") -> None:
    """Raise one line when ``runtime`` ``version`` is too old for the ``.tflite`` at ``path``:
    '<file> needs TFLite >= 2.17 (FULLY_CONNECTED version 12); tflite-runtime 2.13.0 <context>; <advice>'."""
    p = Path(path)
    blob = data if data is not None else p.read_bytes()
    need, why = required_runtime(blob, str(p))
    if op_level(runtime, version)[:2] >= need[:2]:
        return
    need_text = f"TFLite >= {show(need)}"
    raise EdgeShituError(f"{p} needs {need_text} ({why}); {runtime} {version} {context}"
                         + (f"; {advice}" if advice else ""))


# ---------------------------------------------------------------- on the device
def installed_version(engine: str) -> Optional[str]:
    """The installed version of a TFLite runtime ('tflite-runtime' / 'ai-edge-litert'), or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version  # 3.8+
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(engine)
    except PackageNotFoundError:
        pass
    try:  # a runtime that is importable but not pip-installed (a vendored copy): its own attribute
        import importlib

        return str(importlib.import_module(engine.replace("-", "_")).__version__)
    except Exception:
        return None


def check_installed(path: Union[str, Path], engine: str, version: Optional[str] = None) -> None:
    """Called by the TFLite backend before the interpreter is built: one line when the installed
    runtime is older than the op versions in the file need (instead of the interpreter's
    "Didn't find op for builtin opcode" after a half-opened bundle). A file that cannot be read or
    parsed here is left to the interpreter, which reports it in its own words."""
    version = version or installed_version(engine)
    if not version:
        return
    try:
        data = Path(path).read_bytes()
        parse_version(version)
    except (OSError, ValueError):
        return
    try:
        required_runtime(data, str(path))
    except (EdgeShituError, struct.error, IndexError):
        return
    other = "ai-edge-litert (glibc >= 2.34, Python >= 3.10)" if engine == "tflite-runtime" else "a newer ai-edge-litert"
    check_loadable(path, engine, version, data=data, context="is installed",
                   advice=f"upgrade it (pip install -U {engine}) or install {other}, or convert the bundle "
                          "for this board (edge-shitu convert --board NAME checks the board's oldest runtime)")
