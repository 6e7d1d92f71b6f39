"""Which links a node dials: ``--join`` flags plus an optional topology file.

The topology file is JSON and is read again on SIGHUP, so links can be added and removed while
the node runs::

    {"links": [{"url": "http://10.0.0.1:2379", "token": "s3cret", "mode": "both"}]}

``mode`` is ``both`` (default), ``receive`` (a backup: only pull the peer's entries) or
``send`` (only push ours).
"""

from __future__ import annotations

import json
from pathlib import Path

from shim.config import ConfigError, ServerConfig, split_host_port
from shim.replication.link_stream import LinkSpec

MODES = {"both": (True, True), "receive": (False, True), "send": (True, False)}


def link_specs(config: ServerConfig) -> list[LinkSpec]:
    token = config.join_token or ""
    specs = [_spec(url, token, config.join_mode, "--join") for url in config.joins]
    if config.topology_file is not None:
        specs += load_topology(config.topology_file)
    return specs


def load_topology(path: Path) -> list[LinkSpec]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read topology file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"topology file {path} is not valid JSON: {exc}") from None
    links = document.get("links") if isinstance(document, dict) else None
    if not isinstance(links, list):
        raise ConfigError(f"topology file {path}: expected {{\"links\": [...]}}")
    specs = []
    for i, link in enumerate(links):
        where = f"topology file {path}, link {i + 1}"
        if not isinstance(link, dict) or not isinstance(link.get("url"), str):
            raise ConfigError(f"{where}: needs a \"url\"")
        token = link.get("token", "")
        if not isinstance(token, str):
            raise ConfigError(f"{where}: \"token\" must be a string")
        specs.append(_spec(link["url"], token, str(link.get("mode", "both")), where))
    return specs


def _spec(url: str, token: str, mode: str, where: str) -> LinkSpec:
    if mode not in MODES:
        raise ConfigError(f"{where}: mode must be one of {', '.join(MODES)}, not {mode!r}")
    send, receive = MODES[mode]
    spec = LinkSpec(url=url, token=token, send=send, receive=receive)
    split_host_port(spec.target, where)
    return spec
