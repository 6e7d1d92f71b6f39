"""Reading a node's Prometheus metrics (``--metrics-address``)."""

from __future__ import annotations

import urllib.request


def scrape(address: str) -> dict[str, float]:
    """Samples by name with labels, e.g. 'shim_revision' or 'x_total{peer="a"}'."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
