"""HDF5 feature stores: the writer used by ``extract`` and the reader used by training scripts.

Importing this package never imports TensorFlow.
"""

from .codecs import DamagedStoreError
from .merge import merge_stores
from .reader import FeatureStore, IncompleteStoreError, IncompleteStoreWarning, open_store
from .verify import verify_store
from .writer import StoreLockedError, StoreWriter, UnrecoverableStoreError

__all__ = [
    "DamagedStoreError",
    "FeatureStore",
    "IncompleteStoreError",
    "IncompleteStoreWarning",
    "StoreLockedError",
    "StoreWriter",
    "UnrecoverableStoreError",
    "merge_stores",
    "open_store",
    "verify_store",
]
