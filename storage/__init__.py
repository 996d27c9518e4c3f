"""Persistence: one SQLite file (sqlite-utils) and adapter folders written atomically.

Imports nothing else of attune, so every other package can depend on it.
"""

from storage.db import Store, connect

__all__ = ["Store", "connect"]
