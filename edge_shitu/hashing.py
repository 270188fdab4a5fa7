"""Float features -> binary codes, and the projection used to re-rank without extra storage.

Two methods (docs/index-format.md, "Hashing"):

* ``sign``: PaddleClas's ``feature_binarize: sign``. Needs nothing but the feature.
* ``itq``: centring + PCA to ``bits`` dimensions + an ITQ rotation learned on the gallery at
  build time. The rotation starts from a normalised Hadamard matrix (deterministic, and it
  spreads PCA variance evenly over the bits) and stops after a few iterations: on the real
  PP-ShiTu drink embeddings 20 iterations re-rank better than 50 (full convergence over-fits a
  gallery of ~1k items), see benchmarks/bench_index.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.index_format import Method

DEFAULT_ITQ_ITERS = 20
SUPPORTED_BITS = (64, 128, 256, 512, 1024)


def check_features(x: np.ndarray, dim: int | None = None, what: str = "features") -> np.ndarray:
    """Validate a float feature matrix; returns it as C-contiguous float32 (n, dim)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise EdgeShituError(f"{what}: expected a 2-D array (rows x dim), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise EdgeShituError(f"{what}: expected float features, got dtype {x.dtype}; save them as float32")
    if dim is not None and x.shape[1] != dim:
        raise EdgeShituError(f"{what}: rows have {x.shape[1]} values but the index expects {dim}; use features "
                             "from the same extractor the index was built with")
    if not np.all(np.isfinite(x)):
        raise EdgeShituError(f"{what}: contains NaN or infinite values; check the extractor output")
    return np.ascontiguousarray(x, dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def hadamard(n: int) -> np.ndarray:
    """Sylvester Hadamard matrix / sqrt(n) (orthonormal); n must be a power of two."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def fit_itq(x: np.ndarray, bits: int, iters: int = DEFAULT_ITQ_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Learn (mean, projection) on gallery features x (n, dim), already normalised."""
    n, dim = x.shape
    if bits > dim:
        raise EdgeShituError(f"itq: {bits} bits need features of at least {bits} dimensions (got {dim}); "
                             "choose fewer bits")
    if n < 2:
        raise EdgeShituError("itq: needs at least 2 gallery items to learn from; use --method sign")
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    xc = x64 - mean
    # PCA basis from the covariance (dim x dim): cheap for any n, and when n < bits the
    # eigenvectors of zero eigenvalues still complete an orthonormal basis.
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    pca = evecs[:, np.argsort(evals)[::-1][:bits]]
    # Canonical signs (largest-magnitude entry positive): eigenvector signs are arbitrary and
    # BLAS-dependent, and the fixed Hadamard start is not invariant to them.
    pca *= np.where(pca[np.abs(pca).argmax(axis=0), np.arange(bits)] < 0, -1.0, 1.0)
    v = xc @ pca
    if bits & (bits - 1) == 0:
        rot = hadamard(bits)
    else:  # not a power of two: a fixed-seed random rotation keeps it deterministic
        rot, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((bits, bits)))
    for _ in range(iters):
        b = np.where(v @ rot >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        rot = (u @ wt).T
    return mean.astype(np.float32), (pca @ rot).astype(np.float32)


@dataclass(frozen=True)
class Hasher:
    """The hashing parameters stored in an index; hashes queries exactly as the gallery was hashed."""

    method: Method
    bits: int
    dim: int
    normalize: bool = True
    mean: np.ndarray | None = None
    proj: np.ndarray | None = None

    @classmethod
    def fit(cls, features: np.ndarray, bits: int = 256, method: str | Method = "itq",
            normalize: bool = True, iters: int = DEFAULT_ITQ_ITERS) -> Hasher:
        x = check_features(features)
        if bits % 64 or not 64 <= bits <= 4096:
            raise EdgeShituError(f"--bits {bits}: must be a multiple of 64 between 64 and 4096 (e.g. 256)")
        m = parse_method(method)
        dim = x.shape[1]
        if normalize:
            x = l2_normalize(x)
        if m == Method.SIGN:
            if bits != dim:
                raise EdgeShituError(f"sign hashing gives one bit per feature value: --bits must be {dim} "
                                     f"(got {bits}); use --method itq for other widths")
            return cls(Method.SIGN, bits, dim, normalize)
        mean, proj = fit_itq(x, bits, iters)
        return cls(Method.ITQ, bits, dim, normalize, mean, proj)

    def _z(self, x: np.ndarray) -> np.ndarray:
        x = check_features(x, self.dim, "query features")
        if self.normalize:
            x = l2_normalize(x)
        if self.method == Method.SIGN:
            return x
        assert self.mean is not None and self.proj is not None
        return (x - self.mean) @ self.proj

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Packed codes (n, bits/8) uint8, MSB first (the on-disk bit order)."""
        return np.packbits(self._z(features) > 0, axis=1)

    def project(self, features: np.ndarray) -> np.ndarray:
        """Query projection for asymmetric re-ranking: score = project(q) . (2b - 1).

        The SAME centred projection the codes are the signs of. (Without the centring, the
        score gains a term mean @ P . (2b - 1) that differs per gallery item and favours items
        whose bits follow the gallery mean: for all-positive features, whose mean is large, it
        made re-ranking lose 4-5 recall points instead of gaining.)
        """
        return self._z(features).astype(np.float32)


def parse_method(method: str | Method) -> Method:
    if isinstance(method, Method):
        return method
    try:
        return Method[str(method).upper()]
    except KeyError:
        raise EdgeShituError(f"--method {method}: unknown hashing method; use 'itq' or 'sign'") from None
