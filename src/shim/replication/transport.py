"""The gRPC transport under replication links, both ends in one place: what a dialer's channel
sets and what the server admits, so the two cannot drift apart.

The server's ping policy is the one gRPC enforces: a ping that arrives sooner than the
interval after the previous one (with nothing sent since) is a strike, and the third strike
ends the connection with GOAWAY "too_many_pings". The links' keepalive must stay outside it.
"""

from __future__ import annotations

import grpc

# A dialer pings a link's connection this often, and drops the connection when an answer takes
# longer than the timeout: a dead peer is noticed within about 5 s (the link's own silence
# check, 6 s, is the other bound).
LINK_KEEPALIVE_MS = 2000
LINK_KEEPALIVE_TIMEOUT_MS = 3000
# What the server admits: pings half the links' keepalive apart, so a ping that waited behind
# data on a slow network is no strike. For etcd clients this is looser than etcd's own policy
# (5 s, --grpc-keepalive-min-time), never stricter.
SERVER_MIN_PING_INTERVAL_MS = LINK_KEEPALIVE_MS // 2

# HTTP/2 flow control for links on slow networks: a stream may have this much in flight from
# the start (HTTP/2's default window of 64 KiB would cap a link at 64 KiB per round trip, 640
# KiB/s at 100 ms), and gRPC's bandwidth-delay probing widens the windows beyond it as the
# link needs; large frames cut the per-frame work. Both ends set them: the server's options
# govern what a dialer may send it.
TRANSPORT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.http2.lookahead_bytes", 8 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 1),
    ("grpc.http2.max_frame_size", 1024 * 1024),
]

# Every message of a link is compressed (gRPC's per-message gzip): half the bytes of a 256 B
# value's entry, a tenth of a batch of Pod edits, for 7-20 us of CPU per entry
# (bench/link_compression.py).
COMPRESSION = grpc.Compression.Gzip


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The dialer's gRPC channel: keepalive to notice a dead peer (only while the link's call
    is open: a connection without one is no link's), it receives messages as large as this
    node states in its Hello, and a connection of its own (not a subchannel shared with an
    earlier attempt, which may sit in gRPC's reconnect backoff)."""
    return [
        ("grpc.keepalive_time_ms", LINK_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", LINK_KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.use_local_subchannel_pool", 1),
        *TRANSPORT_OPTIONS,
    ]


def server_options() -> list[tuple[str, int]]:
    """What the server (etcd API and links on one port) sets for the transport: it admits the
    links' keepalive, and the links' flow control."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        *TRANSPORT_OPTIONS,
    ]
