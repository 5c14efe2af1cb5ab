"""Documents into Qdrant: load files, folders and URLs as LangChain Documents, split them, store and search.

    from loaders import load, split
    from loaders.store import DocumentStore, get_store
"""
from loaders.documents import SUPPORTED, LoadError, expand, load, load_bytes, source_key, split

__all__ = ["load", "load_bytes", "split", "expand", "source_key", "LoadError", "SUPPORTED"]
