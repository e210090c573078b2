"""Time-series storage: an in-memory head, a head-log WAL and compressed chunks.

``open_store(url, node=...)`` opens SQLite (default) or PostgreSQL; see ``store.py``.

The two names are imported on first use (module ``__getattr__``): the daemon imports
``storage.instance_lock`` (standard library only) before its first stored sample, and
importing this package must not load SQLAlchemy and numpy then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuwarden.storage.store import Store, open_store

__all__ = ["Store", "open_store"]


def __getattr__(name: str) -> Any:
    if name == "open_store":
        from gpuwarden.storage.store import open_store

        return open_store
    if name == "Store":
        from gpuwarden.storage.store import Store

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
