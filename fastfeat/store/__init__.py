"""HDF5 feature stores: the writer used by ``extract`` and the reader used by training scripts."""

from .reader import FeatureStore, IncompleteStoreWarning, open_store
from .writer import StoreWriter

__all__ = ["FeatureStore", "IncompleteStoreWarning", "StoreWriter", "open_store"]
