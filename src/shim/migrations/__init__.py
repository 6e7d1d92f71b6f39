"""The SQL schema, one folder per dialect (``sqlite/``, ``postgres/``) of ``NNNN_name.sql`` files,
applied in order by :mod:`shim.backend.migrations`."""
