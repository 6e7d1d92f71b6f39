"""A lab of test "hosts" in Linux network namespaces, with real network faults.

Topology (nothing is added to the root namespace's network, and no namespace has a
default route, so no lab packet can leave the machine):

    ns <prefix>-h1  eth0 <subnet>.1/24 --veth-- sw-h1 \\
    ns <prefix>-h2  eth0 <subnet>.2/24 --veth-- sw-h2  }-- bridge br0 in ns <prefix>-sw
    ns <prefix>-hN  eth0 <subnet>.N/24 --veth-- sw-hN /

Faults are nftables rules in the switch namespace's `bridge` family (hook forward):
matching IPv4/IPv6 frames are dropped silently, so open TCP connections stall and
retransmit exactly as in a real partition, and resume after `heal()`. ARP still passes.
`tc netem` is not used: the CI kernel is built without it.

Delay (`delay(i, ms)`) holds every packet host i receives for a fixed time: an iptables
NFQUEUE rule on its eth0 ingress hands packets to a small user-space process
(nfqueue_delay.py) that lets each go `ms` later. Ingress, not egress: a packet held on egress
still counts against the sender's TCP small-queue budget, and TCP then crawls (netem avoids
that by orphaning the packet; user space cannot). With every host delayed by d, a round trip
between two hosts takes 2d. `probe(a, b)` measures it with TCP echoes. Delay also needs
iptables (Debian package iptables), which `delay_available()` checks.

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 and nftables (Debian packages).
`NetLab.available()` tells whether all of that works here, and why not otherwise.

The test process itself stays in the root namespace and cannot reach lab addresses by
ordinary sockets. `NetLab.socket(i)` makes a socket inside host i; servers may also
listen on a unix-domain socket path, which is reachable from every network namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

Socket = socket.socket  # the annotations below sit next to a method named `socket`

_CLONE_NEWNET = 0x40000000
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_NFQUEUE_DELAY = Path(__file__).with_name("nfqueue_delay.py")
_TABLE = "shimlab"  # nft table (bridge family) in the switch namespace
_CHAIN = "faults"  # note: "fwd" is an nft keyword and cannot name a chain


class NetLabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def _tool(name: str) -> str | None:
    """Path of an admin tool, also looking in the sbin directories a test PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _run(argv: Sequence[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise NetLabError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail}")
    return proc.stdout


class NetLab:
    """`hosts` network namespaces on one bridge; see the module docstring.

    Use as a context manager (`with NetLab(3) as lab:`), or call `up()` and `down()`.
    Give parallel labs different prefixes (namespace names must be unique on the
    machine); the same subnet may be reused, since each lab is its own network.
    """

    _probed: ClassVar[bool] = False
    _unavailable_reason: ClassVar[str | None] = None

    def __init__(self, hosts: int, prefix: str = "shimlab", subnet: str = "10.214.0") -> None:
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts must be 1..250, not {hosts}")
        if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,40}", prefix):
            raise ValueError(f"bad namespace prefix {prefix!r}")
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", subnet):
            raise ValueError(f"subnet must be the first three octets of a /24, not {subnet!r}")
        self.hosts = hosts
        self.prefix = prefix
        self.subnet = subnet
        self.switch = f"{prefix}-sw"
        self._procs: list[subprocess.Popen[Any]] = []
        self._delays: dict[int, tuple[float, subprocess.Popen[str]]] = {}  # host -> (ms, proc)
        self._is_up = False
        self._ip = _tool("ip") or "ip"
        self._nft = _tool("nft") or "nft"
        self._iptables = _tool("iptables") or "iptables"

    # --- availability ---------------------------------------------------------------

    @classmethod
    def available(cls) -> str | None:
        """None if labs can be built on this machine, else the reason they cannot.

        Really builds (and removes) a tiny lab: namespace, bridge, veth and an nft
        bridge-family table. The answer is cached for the process.
        """
        if not cls._probed:
            cls._unavailable_reason = cls._probe()
            cls._probed = True
        return cls._unavailable_reason

    @classmethod
    def for_test(cls, hosts: int, prefix: str, subnet: str = "10.214.0") -> NetLab:
        """A lab for a test that needs one: the test fails (never skips) where labs cannot be
        built, with the reason."""
        reason = cls.available()
        if reason is not None:
            import pytest  # only tests call this; bench imports this module without pytest

            pytest.fail(f"network-namespace lab unavailable: {reason}", pytrace=False)
        return cls(hosts, prefix=prefix, subnet=subnet)

    @classmethod
    def _probe(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"network namespaces need Linux, this is {sys.platform}"
        missing = [
            f"`{tool}` (Debian package {package})"
            for tool, package in (("ip", "iproute2"), ("nft", "nftables"))
            if _tool(tool) is None
        ]
        if missing:
            return "not installed: " + ", ".join(missing)
        if os.geteuid() != 0:
            return (
                f"building network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); "
                f"running as uid {os.geteuid()}"
            )
        lab = cls(2, prefix=f"shimprobe{os.getpid()}", subnet="10.214.255")
        try:
            lab.up()
        except (NetLabError, OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot build a network-namespace lab here: {exc}"
        finally:
            lab.down()
        return None

    @staticmethod
    def delay_available() -> str | None:
        """None if `delay()` can work here (given `available()`), else why not."""
        if _tool("iptables") is None:
            return "not installed: `iptables` (Debian package iptables), needed for delays"
        return None

    # --- names and commands -----------------------------------------------------------

    def _check(self, i: int) -> None:
        if not 1 <= i <= self.hosts:
            raise ValueError(f"no host {i}: the lab has hosts 1..{self.hosts}")

    def namespace(self, i: int) -> str:
        """Name of host i's network namespace (`<prefix>-h<i>`)."""
        self._check(i)
        return f"{self.prefix}-h{i}"

    def addr(self, i: int) -> str:
        """Host i's IPv4 address."""
        self._check(i)
        return f"{self.subnet}.{i}"

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside host i (`ip netns exec`, which execs argv itself)."""
        return [self._ip, "netns", "exec", self.namespace(i), *argv]

    def popen(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside host i; `down()` kills it (and its process group).

        Runs in a new session unless `start_new_session=False` is passed, so that a
        Ctrl-C reaches pytest only and `down()` can kill the process's children too.
        """
        popen_kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(i, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def socket(
        self, i: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> Socket:
        """A new socket inside host i's namespace, usable from the test process.

        A socket belongs to the namespace it was created in, so a short-lived thread
        enters host i (setns affects only that thread), creates it and exits.
        """
        path = f"/run/netns/{self.namespace(i)}"
        result: list[Socket | BaseException] = []

        def make() -> None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
                finally:
                    os.close(fd)
                result.append(Socket(family, kind))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=make, name=f"netns-{self.namespace(i)}")
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def connect(self, i: int, address: tuple[str, int], timeout: float = 5.0) -> Socket:
        """A TCP connection from host i to `address` (addr, port); socket timeout set."""
        sock = self.socket(i)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    # --- lifecycle -----------------------------------------------------------------------

    def up(self) -> None:
        """Create the switch and the hosts. On failure, removes what it made and raises."""
        if self._is_up:
            raise NetLabError(f"lab {self.prefix} is already up")
        existing = self._existing_namespaces()
        if existing:
            raise NetLabError(
                f"namespaces {', '.join(sorted(existing))} already exist "
                f"(another lab with prefix {self.prefix!r}, or a leftover: ip netns del NAME)"
            )
        ip, sw = self._ip, self.switch
        self._is_up = True  # from here on, down() has something to undo
        try:
            _run([ip, "netns", "add", sw])
            _run([ip, "-n", sw, "link", "set", "lo", "up"])
            _run([ip, "-n", sw, "link", "add", "br0", "type", "bridge"])
            _run([ip, "-n", sw, "link", "set", "br0", "up"])
            _run(
                [ip, "netns", "exec", sw, self._nft, "-f", "-"],
                stdin=(
                    f"table bridge {_TABLE} {{\n"
                    f"  chain {_CHAIN} {{ type filter hook forward priority 0; policy accept; }}\n"
                    "}\n"
                ),
            )
            for i in range(1, self.hosts + 1):
                ns, port = self.namespace(i), f"sw-h{i}"
                _run([ip, "netns", "add", ns])
                _run([ip, "-n", ns, "link", "set", "lo", "up"])
                # Made inside the switch namespace with the far end moved straight into
                # the host: the root namespace never sees either end.
                _run([ip, "-n", sw, "link", "add", port, "type", "veth",
                      "peer", "name", "eth0", "netns", ns])
                _run([ip, "-n", sw, "link", "set", port, "master", "br0", "up"])
                _run([ip, "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0"])
                _run([ip, "-n", ns, "link", "set", "eth0", "up"])
        except BaseException:
            self.down()
            raise

    def down(self, timeout: float = 5.0) -> None:
        """Kill the processes started in the lab, then delete its namespaces.

        Idempotent, and safe after a partial or failed `up()`. Processes get SIGTERM,
        then SIGKILL after `timeout` seconds; anything else still running inside a lab
        namespace is killed too.
        """
        self._stop_procs(timeout)
        self._delays.clear()
        for ns in sorted(self._existing_namespaces()):
            with contextlib.suppress(NetLabError, subprocess.TimeoutExpired):
                for pid in _run([self._ip, "netns", "pids", ns]).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(NetLabError, subprocess.TimeoutExpired):
                _run([self._ip, "netns", "del", ns])
        self._is_up = False

    def _stop_procs(self, timeout: float) -> None:
        live = [proc for proc in self._procs if proc.poll() is None]
        for proc in live:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self._procs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen[Any], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The process leads its own group when started in a new session (the default).
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    def _names(self) -> list[str]:
        return [self.switch, *(f"{self.prefix}-h{i}" for i in range(1, self.hosts + 1))]

    def _existing_namespaces(self) -> set[str]:
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return set()
        return set(names) & set(self._names())

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # --- faults --------------------------------------------------------------------------

    def _nft_rules(self, matches: Sequence[str]) -> None:
        if not self._is_up:
            raise NetLabError(f"lab {self.prefix} is not up")
        script = "".join(
            f"add rule bridge {_TABLE} {_CHAIN} {match} meta protocol {{ ip, ip6 }} drop\n"
            for match in matches
        )
        _run([self._ip, "netns", "exec", self.switch, self._nft, "-f", "-"], stdin=script)

    def partition(self, a: int, b: int) -> None:
        """Drop all IP traffic between hosts a and b, both ways (open connections too)."""
        self._check(a)
        self._check(b)
        if a == b:
            raise ValueError("a host cannot be partitioned from itself")
        self._nft_rules([
            f'iifname "sw-h{a}" oifname "sw-h{b}"',
            f'iifname "sw-h{b}" oifname "sw-h{a}"',
        ])

    def isolate(self, a: int) -> None:
        """Drop all IP traffic to and from host a (it keeps its own loopback)."""
        self._check(a)
        self._nft_rules([f'iifname "sw-h{a}"', f'oifname "sw-h{a}"'])

    def heal(self) -> None:
        """Remove every fault. Stalled TCP connections resume at their next retransmit."""
        if not self._is_up:
            raise NetLabError(f"lab {self.prefix} is not up")
        _run([self._ip, "netns", "exec", self.switch, self._nft, "flush", "chain", "bridge",
              _TABLE, _CHAIN])

    def faults(self) -> str:
        """The active fault rules, as nft lists them (for failure messages)."""
        out = _run([self._ip, "netns", "exec", self.switch, self._nft, "list", "chain",
                    "bridge", _TABLE, _CHAIN])
        rules = [line.strip() for line in out.splitlines() if line.strip().endswith("drop")]
        return "\n".join(rules) or "(none)"

    # --- delay ----------------------------------------------------------------------------

    def delay(self, i: int, ms: float) -> None:
        """Hold every packet host i receives for `ms` milliseconds (0: no delay). Replaces
        the host's earlier delay; packets already held are let go first."""
        self._check(i)
        if not self._is_up:
            raise NetLabError(f"lab {self.prefix} is not up")
        self._undelay(i)
        if ms <= 0:
            return
        consumer = self.popen(
            i, [sys.executable, str(_NFQUEUE_DELAY), "--queue", "0", "--delay-ms", f"{ms:g}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        assert consumer.stdout is not None
        line = consumer.stdout.readline().strip()
        if not line.startswith("ready"):
            consumer.kill()
            rest = consumer.communicate(timeout=5)[0]
            raise NetLabError(f"the delay on host {i} did not start: {line}\n{rest}")
        self._delays[i] = (ms, consumer)
        # --queue-bypass: should the consumer ever be gone, packets pass undelayed (never lost).
        _run(self.command(i, [self._iptables, "-t", "mangle", "-A", "PREROUTING", "-i", "eth0",
                              "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]))

    def delays(self) -> dict[int, float]:
        """The delay in ms of each delayed host."""
        return {i: ms for i, (ms, _) in self._delays.items()}

    def _undelay(self, i: int) -> None:
        held = self._delays.pop(i, None)
        if held is None:
            return
        _run(self.command(i, [self._iptables, "-t", "mangle", "-F", "PREROUTING"]))
        consumer = held[1]
        consumer.terminate()  # lets what it still holds go, then exits
        try:
            consumer.wait(10)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
        if consumer.stdout is not None:
            consumer.stdout.close()

    def probe(self, a: int, b: int, count: int = 20, timeout: float = 10.0) -> list[float]:
        """Round trips in ms of `count` small TCP echoes from host a to host b, sorted (a
        ping: the lab has no ICMP tool to rely on). The echo server is a thread of this
        process listening inside host b."""
        self._check(a)
        self._check(b)
        listener = self.socket(b)
        listener.settimeout(timeout)
        listener.bind((self.addr(b), 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def echo() -> None:
            with contextlib.suppress(OSError), listener:
                conn, _ = listener.accept()
                with conn:
                    while data := conn.recv(64):
                        conn.sendall(data)

        server = threading.Thread(target=echo, name=f"probe-h{b}", daemon=True)
        server.start()
        rtts = []
        with self.connect(a, (self.addr(b), port), timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for n in range(count):
                message = b"%015d\n" % n
                started = time.perf_counter()
                sock.sendall(message)
                got = b""
                while len(got) < len(message):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise NetLabError(f"probe h{a} -> h{b}: the echo closed the connection")
                    got += chunk
                rtts.append((time.perf_counter() - started) * 1000)
        server.join(timeout)
        return sorted(rtts)

