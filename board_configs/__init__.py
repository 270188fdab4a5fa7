"""Per-board settings (JSON, one file per board). Shipped as package data: edge_shitu.board_configs."""
