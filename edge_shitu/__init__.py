"""edge-shitu: PP-ShiTu on small devices (verified int8 artifacts + a compact binary Hamming index)."""

__version__ = "0.1.0"
