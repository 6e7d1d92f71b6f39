"""Delay every packet of an NFQUEUE by a fixed time: `tc netem` for kernels without it.

    python nfqueue_delay.py --queue 0 --delay-ms 25

Run inside a network namespace whose ingress sends packets to the queue, e.g.
`iptables -t mangle -A PREROUTING -i eth0 -j NFQUEUE --queue-num 0 --queue-bypass`. The
kernel hands each packet's metadata to this process (never its payload) and holds the packet
until it hears a verdict; this process accepts each one `delay-ms` after it arrived. Packets
keep their order (one fixed delay), so a verdict for the newest due packet accepts all older
ones at once (a batch verdict).

The queue is configured fail-open: if it fills, the kernel lets packets through undelayed
instead of dropping them. On SIGTERM/SIGINT every packet still held is accepted at once and the
process exits, so stopping it loses nothing. It prints one line, "ready queue=N delay=MS", once
bound. Standard library only (it runs as a script, anywhere).

Why user space and ingress: this machine's kernel has no sch_netem; delaying on egress would
count held packets against the sender's TCP small-queue budget and throttle TCP (see
netns.py).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

NFNL_SUBSYS_QUEUE = 3
MSG_PACKET, MSG_CONFIG, MSG_VERDICT_BATCH = 0, 2, 3
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CFG_F_FAIL_OPEN, CFG_F_GSO = 1, 4
CMD_BIND = 1
COPY_META = 1
ATTR_PACKET_HDR, ATTR_VERDICT_HDR = 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
NLA_TYPE_MASK = 0x3FFF
QUEUE_MAXLEN = 65536

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # nlattr: len, type


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, flags: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    # nfgenmsg: family, version, resource id (the queue number, big-endian)
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    return _HEADER.pack(_HEADER.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags,
                        seq, 0) + body


class DelayQueue:
    def __init__(self, queue: int, delay_s: float) -> None:
        self.queue = queue
        self.delay_s = delay_s
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        # A full socket buffer must not turn into an error on every later read.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._seq = 0
        self.held: collections.deque[tuple[float, int]] = collections.deque()  # (due, id)

    def _configure(self, attrs: bytes) -> None:
        self._seq += 1
        self.sock.send(_message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self.queue, attrs,
                                self._seq))
        while True:
            data = self.sock.recv(65536)
            _, kind, _, seq, _ = _HEADER.unpack_from(data)
            if kind == NLMSG_ERROR and seq == self._seq:
                errno = struct.unpack_from("=i", data, _HEADER.size)[0]
                if errno:
                    raise OSError(-errno, f"NFQUEUE configuration: {os.strerror(-errno)}")
                return

    def bind(self) -> None:
        self._configure(_attr(CFG_CMD, struct.pack("=BBH", CMD_BIND, 0, 0)))
        self._configure(_attr(CFG_PARAMS, struct.pack(">IB", 0, COPY_META)))
        self._configure(_attr(CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN)))
        # Fail open when full; take GSO packets whole (the payload is never looked at).
        flags = struct.pack(">I", CFG_F_FAIL_OPEN | CFG_F_GSO)
        self._configure(_attr(CFG_FLAGS, flags) + _attr(CFG_MASK, flags))

    def accept_through(self, packet_id: int) -> None:
        """Accept every held packet with an id up to ``packet_id`` (one batch verdict)."""
        verdict = _attr(ATTR_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))
        self.sock.send(_message(MSG_VERDICT_BATCH, NLM_F_REQUEST, self.queue, verdict))

    def _take(self, data: bytes) -> None:
        """Hold the packets announced in one read."""
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind = _HEADER.unpack_from(data, offset)[:2]
            if length < _HEADER.size:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | MSG_PACKET:
                at = offset + _HEADER.size + 4  # after nfgenmsg
                while at + _ATTR.size <= offset + length:
                    attr_len, attr_kind = _ATTR.unpack_from(data, at)
                    if attr_len < _ATTR.size:
                        break
                    if attr_kind & NLA_TYPE_MASK == ATTR_PACKET_HDR:
                        packet_id = struct.unpack_from(">I", data, at + _ATTR.size)[0]
                        self.held.append((time.monotonic() + self.delay_s, packet_id))
                        break
                    at += (attr_len + 3) & ~3
            offset += (length + 3) & ~3

    def run(self) -> None:
        """Until SIGTERM/SIGINT (``Stop``); then everything still held goes at once."""
        try:
            while True:
                now = time.monotonic()
                due = None
                while self.held and self.held[0][0] <= now:
                    due = self.held.popleft()[1]
                if due is not None:
                    self.accept_through(due)
                timeout = max(0.0, self.held[0][0] - now) if self.held else None
                readable, _, _ = select.select([self.sock], [], [], timeout)
                if readable:
                    self._take(self.sock.recv(1 << 20))
        except Stop:
            if self.held:
                self.accept_through(self.held[-1][1])


class Stop(Exception):
    """A stop signal arrived (raised from the handler: it must end a select() that would
    otherwise go on waiting)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)

    def stop(_signum: int, _frame: object) -> None:
        raise Stop()

    # The emulated network should not wait behind the servers it connects for a core: ask for
    # a higher priority (root may; otherwise it runs at the normal one).
    with contextlib.suppress(OSError):
        os.nice(-10)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = DelayQueue(args.queue, args.delay_ms / 1000)
    delay.bind()
    print(f"ready queue={args.queue} delay={args.delay_ms:g}", flush=True)
    delay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
