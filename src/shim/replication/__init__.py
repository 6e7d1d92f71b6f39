"""Replication: entries, merge rules, links between nodes."""
