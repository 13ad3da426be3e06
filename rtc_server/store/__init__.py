"""Where sessions keep their continuation state: live states, exportable snapshots, and the blobs behind them.

``base`` holds the contract and the pure externalisation rules; ``memory`` the one-process backends;
``redis_store`` the backends replicas share (needs the ``redis`` extra, imported only when used).
"""

from rtc_server.store.base import (
    BlobNotFoundError,
    BlobStore,
    InvalidStateError,
    SessionStore,
    StoreError,
)
from rtc_server.store.memory import InMemoryBlobStore, InMemorySessionStore

__all__ = [
    "BlobNotFoundError",
    "BlobStore",
    "InMemoryBlobStore",
    "InMemorySessionStore",
    "InvalidStateError",
    "SessionStore",
    "StoreError",
]
