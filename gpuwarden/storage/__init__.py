"""Time-series storage: an in-memory head, a head-log WAL and compressed chunks.

``open_store(url, node=...)`` opens SQLite (default) or PostgreSQL; see ``store.py``.
"""

from gpuwarden.storage.engine import open_store
from gpuwarden.storage.store import Store

__all__ = ["Store", "open_store"]
