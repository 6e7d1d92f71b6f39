"""Serving from several processes: one store process owns the write path; serving
processes answer gRPC on one shared port."""
