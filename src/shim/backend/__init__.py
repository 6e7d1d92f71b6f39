"""SQL backends: where the log lives. The store (``shim.mvcc``) talks to them through the
``ReadView`` / ``WriteTxn`` protocols in ``shim.backend.base``."""
