"""Where the API reads and writes state: one interface, an embedded and a distributed implementation."""

from tokentrace.api.stores.base import Store, StoreHealth, StoreUnavailable

__all__ = ["Store", "StoreHealth", "StoreUnavailable"]
