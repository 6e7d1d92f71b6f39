"""The real etcdctl 3.5 `watch` and `lease` commands against shim, compared with etcd 3.5.1.

Each test starts a fresh etcd and a fresh shim and runs exactly the same commands on both,
so revisions stay equal; outputs are compared after normalising what two servers must
differ in (cluster and member ids, raft term, and the lease ids each server chose).
`etcdctl watch` and `etcdctl lease keep-alive` run as subprocesses whose output is read
while writes happen.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import Client, EtcdServer, ShimServer, etcdctl
from tests.support.etcd import Etcdctl
from tests.support.watch_diff import start_both

IDENTITY = frozenset({"cluster_id", "member_id", "raft_term"})
PROGRESS_LINE = re.compile(r"^progress notify: (\d+)$")
LEASE_HEX = re.compile(r"\b[0-9a-f]{16}\b")


def without_progress(lines: list[str]) -> list[str]:
    return [line for line in lines if not PROGRESS_LINE.match(line)]


def normalise_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalise_json(v) for k, v in value.items() if k not in IDENTITY}
    if isinstance(value, list):
        return [normalise_json(v) for v in value]
    return value


REMAINING = re.compile(r'(remaining\(|"ttl": )(-?\d+)')


def with_remaining_of(reference: str, text: str) -> str:
    """`text` with the remaining TTLs of `reference` where they differ by at most a second:
    each server counts a lease down on its own clock, from its own grant."""
    theirs = [int(m.group(2)) for m in REMAINING.finditer(reference)]
    ours = iter([int(m.group(2)) for m in REMAINING.finditer(text)])
    if len(theirs) != len(REMAINING.findall(text)):
        return text
    wanted = iter(theirs)

    def fix(match: re.Match[str]) -> str:
        mine, reference_value = next(ours), next(wanted)
        value = reference_value if abs(mine - reference_value) <= 1 else mine
        return f"{match.group(1)}{value}"

    return REMAINING.sub(fix, text)


def normalise_json_line(line: str) -> str:
    try:
        return json.dumps(normalise_json(json.loads(line)), sort_keys=True)
    except json.JSONDecodeError:
        return line


@dataclass
class Servers:
    """The same etcdctl commands against etcd and shim; lease ids renamed in outputs."""

    etcd: EtcdServer
    shim: ShimServer
    lease_names: list[dict[str, str]] = field(default_factory=lambda: [{}, {}])

    @property
    def endpoints(self) -> tuple[str, str]:
        return self.etcd.endpoint, self.shim.endpoint

    def rename(self, side: int, text: str) -> str:
        """Each server's lease ids (hex, and decimal in JSON) as <lease-N>, by first sight."""
        names = self.lease_names[side]

        def name(match: re.Match[str]) -> str:
            return names.setdefault(match.group(0), f"<lease-{len(names) + 1}>")

        text = LEASE_HEX.sub(name, text)
        for hex_id, label in list(names.items()):
            text = re.sub(rf"\b{int(hex_id, 16)}\b", label, text)
        return text

    def lease_id(self, side: int, label: str) -> str:
        return next(h for h, n in self.lease_names[side].items() if n == label)

    def run(self, *args: str, input: str | None = None,
            per_side: Callable[[int, list[str]], list[str]] | None = None
            ) -> tuple[tuple[int, str, str], ...]:
        """Run on etcd then shim; (returncode, stdout, last stderr line) per server,
        stdout with lease ids renamed and JSON identity fields dropped."""
        outcomes = []
        for side, endpoint in enumerate(self.endpoints):
            argv = per_side(side, list(args)) if per_side else list(args)
            result = etcdctl(endpoint, *argv, input=input, check=False)
            stdout = result.stdout
            if "json" in argv:
                stdout = "\n".join(map(normalise_json_line, stdout.splitlines()))
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
            outcomes.append((result.returncode, self.rename(side, stdout),
                             errors[-1] if errors else ""))
        return tuple(outcomes)

    def same(self, *args: str, input: str | None = None,
             per_side: Callable[[int, list[str]], list[str]] | None = None,
             canonical: Callable[[str], str] = lambda text: text) -> tuple[int, str, str]:
        on_etcd, on_shim = self.run(*args, input=input, per_side=per_side)
        on_etcd = (on_etcd[0], canonical(on_etcd[1]), on_etcd[2])
        on_shim = (on_shim[0], canonical(with_remaining_of(on_etcd[1], on_shim[1])), on_shim[2])
        assert on_shim == on_etcd, f"etcdctl {' '.join(args)}\netcd: {on_etcd}\nshim: {on_shim}"
        return on_shim

    def with_lease(self, label: str) -> Callable[[int, list[str]], list[str]]:
        """per_side: replace the argument `label` with that server's lease id."""
        return lambda side, args: [self.lease_id(side, label) if a == label else a for a in args]

    def watch(self, *args: str) -> tuple[Etcdctl, Etcdctl]:
        return Etcdctl(self.etcd.endpoint, "watch", *args), Etcdctl(self.shim.endpoint,
                                                                   "watch", *args)


@pytest.fixture
def servers(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> Iterator[Servers]:
    # Progress notifications every 200 ms tell when a plain `etcdctl watch` has started.
    etcd, shim = start_both(
        etcd_factory, shim_factory,
        etcd_args=["--experimental-watch-progress-notify-interval=200ms"],
        shim_args=["--watch-progress-notify-interval", "200ms"],
    )
    yield Servers(etcd, shim)


def stop_all(*processes: Etcdctl) -> list[list[str]]:
    return [p.stop() for p in processes]


def test_etcdctl_watch_key_and_prefix(servers: Servers) -> None:
    key_watches = servers.watch("--progress-notify", "w/k")
    prefix_watches = servers.watch("--progress-notify", "--prefix", "w/")
    everyone = (*key_watches, *prefix_watches)
    try:
        for process in everyone:  # watching once the first progress notification is out
            process.wait_for(lambda lines: any(PROGRESS_LINE.match(x) for x in lines))
        servers.same("put", "w/k", "v1")
        servers.same("put", "w/j", "two words")
        servers.same("put", "w/k", "v2")
        servers.same("put", "other", "x")
        txn = servers.same("txn", input="\nput w/t1 a\nput w/t2 b\n\n\n")
        assert txn[1] == "SUCCESS\n\nOK\n\nOK\n", txn
        servers.same("del", "w/k")
        servers.same("del", "--prefix", "w/")
        # A progress notification at the last revision comes after every event up to it:
        # once each watch has printed one, all it was sent is in its output.
        _, out, _ = servers.same("get", "other", "-w", "json")
        final = json.loads(out)["header"]["revision"]
        for process in everyone:
            process.wait_for(lambda lines: any(
                int(m.group(1)) >= final for line in lines if (m := PROGRESS_LINE.match(line))
            ))
    finally:
        outputs = stop_all(*everyone)
    key_etcd, key_shim, prefix_etcd, prefix_shim = map(without_progress, outputs)
    assert key_etcd == ["PUT", "w/k", "v1", "PUT", "w/k", "v2", "DELETE", "w/k", ""]
    assert key_shim == key_etcd
    assert prefix_etcd == [
        "PUT", "w/k", "v1", "PUT", "w/j", "two words", "PUT", "w/k", "v2",
        "PUT", "w/t1", "a", "PUT", "w/t2", "b", "DELETE", "w/k", "",
        "DELETE", "w/j", "", "DELETE", "w/t1", "", "DELETE", "w/t2", "",
    ]
    assert prefix_shim == prefix_etcd
    for output in outputs:
        revisions = [int(m.group(1)) for line in output if (m := PROGRESS_LINE.match(line))]
        assert revisions == sorted(revisions) and revisions[-1] <= 9, output


def test_etcdctl_watch_history_with_prev_kv_as_json(servers: Servers) -> None:
    """--rev replays history then goes on live; -w json shows every revision."""
    revisions = []
    for args in (("put", "h/a", "1"), ("put", "h/b", "2"), ("put", "h/a", "3"),
                 ("del", "h/b")):
        _, out, _ = servers.same(*args, "-w", "json")
        revisions.append(json.loads(out)["header"]["revision"])
    first = revisions[0]
    watches = servers.watch("--prefix", "h/", f"--rev={first}", "--prev-kv", "-w", "json")
    try:
        for process in watches:
            process.wait_for(lambda lines: len(lines) >= 1)
        _, out, _ = servers.same("put", "h/a", "4", "-w", "json")
        revisions.append(json.loads(out)["header"]["revision"])
        # One more write: once it is out, so is everything sent before it.
        _, out, _ = servers.same("put", "h/z", "last", "-w", "json")
        revisions.append(json.loads(out)["header"]["revision"])
        for process in watches:
            process.wait_for(lambda lines: len(lines) >= 3)
    finally:
        outputs = stop_all(*watches)
    parsed = [[normalise_json(json.loads(line)) for line in output] for output in outputs]
    assert parsed[1] == parsed[0], f"etcd: {outputs[0]}\nshim: {outputs[1]}"
    history, live, last = parsed[0]
    assert [e["kv"]["mod_revision"] for e in last["Events"]] == [revisions[5]]
    assert [e["kv"]["mod_revision"] for e in history["Events"]] == revisions[:4]
    assert history["Header"]["revision"] == revisions[3]
    assert [e["kv"]["mod_revision"] for e in live["Events"]] == [revisions[4]]
    assert live["Header"]["revision"] == revisions[4]
    assert [("prev_kv" in e) for e in history["Events"]] == [False, False, True, True]
    assert live["Events"][0]["prev_kv"]["mod_revision"] == revisions[2]


def test_etcdctl_watch_compacted_revision(servers: Servers) -> None:
    """Watching from a compacted revision: etcdctl reports the cancellation and exits."""
    for value in "123":
        servers.same("put", "c/a", value)
    servers.same("compact", "3")
    plain = servers.same("watch", "c/a", "--rev=2")
    assert plain[0] != 0 and "canceled" in plain[2], plain
    # etcd's cancel response carries no header revision (etcd sends it with revision 0).
    as_json = servers.same("watch", "c/a", "--rev=2", "-w", "json")
    assert json.loads(as_json[1]) == {"CompactRevision": 3, "Canceled": True,
                                      "Created": False, "Events": [], "Header": {}}


def sorted_attached_keys(text: str) -> str:
    """etcd lists a lease's keys in Go map order: sort them."""
    return re.sub(r"attached keys\(\[([^]]*)\]\)",
                  lambda m: f"attached keys([{' '.join(sorted(m.group(1).split()))}])", text)


def sorted_json_keys(text: str) -> str:
    """The same for `-w json` (keys base64-encoded)."""
    parsed = json.loads(text.replace("<lease-1>", '"<lease-1>"'))
    parsed["keys"] = sorted(parsed["keys"])
    return json.dumps(parsed, sort_keys=True)


def test_etcdctl_lease_commands(servers: Servers) -> None:
    _, granted, _ = servers.same("lease", "grant", "60")
    assert re.fullmatch(r"lease <lease-1> granted with TTL\(60s\)\n", granted), granted
    _, short, _ = servers.same("lease", "grant", "1")
    assert short == "lease <lease-2> granted with TTL(2s)\n", short  # etcd's minimum TTL
    servers.same("lease", "revoke", "<lease-2>", per_side=servers.with_lease("<lease-2>"))
    lease = servers.with_lease("<lease-1>")
    for key in ("l/b", "l/a", "l/c"):
        servers.same("put", "--lease", "<lease-1>", key, "v", per_side=lease)
    servers.same("put", "l/unleased", "v")
    servers.same("lease", "timetolive", "<lease-1>", per_side=lease)
    out = servers.same("lease", "timetolive", "--keys", "<lease-1>", per_side=lease,
                       canonical=sorted_attached_keys)
    assert "attached keys([l/a l/b l/c])" in out[1], out
    servers.same("lease", "timetolive", "--keys", "-w", "json", "<lease-1>", per_side=lease,
                 canonical=sorted_json_keys)
    out = servers.same("lease", "keep-alive", "--once", "<lease-1>", per_side=lease)
    assert out[1] == "lease <lease-1> keepalived with TTL(60)\n", out
    out = servers.same("lease", "list")
    assert out[1] == "found 1 leases\n<lease-1>\n", out
    servers.same("get", "--prefix", "l/", "-w", "json")
    servers.same("lease", "grant", "9000000001")
    servers.same("lease", "revoke", "<lease-1>", per_side=lease)
    servers.same("get", "--prefix", "l/")
    out = servers.same("lease", "revoke", "<lease-1>", per_side=lease)
    assert out[2] == "Error: failed to revoke lease (etcdserver: requested lease not found)"
    out = servers.same("lease", "timetolive", "<lease-1>", per_side=lease)
    assert out[1] == "lease <lease-1> already expired\n", out
    out = servers.same("lease", "keep-alive", "--once", "<lease-1>", per_side=lease)
    assert out[0] != 0 and "requested lease not found" in out[2], out
    out = servers.same("put", "--lease", "<lease-1>", "l/x", "v", per_side=lease)
    assert out[2] == "Error: etcdserver: requested lease not found", out
    assert servers.same("lease", "list")[1] == "found 0 leases\n"


def test_etcdctl_lease_expiry_and_keep_alive(servers: Servers) -> None:
    """A 2 s lease expires and its keys are deleted (watchers see it); another one kept
    alive by `etcdctl lease keep-alive` outlives several TTLs, then expires when the
    keep-alive stops."""
    before = time.monotonic()
    servers.same("lease", "grant", "2")
    servers.same("lease", "grant", "2")
    granted = time.monotonic()
    short, kept = servers.with_lease("<lease-1>"), servers.with_lease("<lease-2>")
    servers.same("put", "--lease", "<lease-1>", "e/a", "1", per_side=short)
    servers.same("put", "--lease", "<lease-1>", "e/b", "2", per_side=short)
    servers.same("put", "--lease", "<lease-2>", "e/c", "3", per_side=kept)
    keep_alives = tuple(
        Etcdctl(endpoint, "lease", "keep-alive", servers.lease_id(side, "<lease-2>"))
        for side, endpoint in enumerate(servers.endpoints)
    )
    watches = servers.watch("--prefix", "e/", "--rev=2")
    try:
        wait_until_gone("e/a", servers, timeout=5)
        gone = time.monotonic()
        assert gone - before >= 1.95, f"lease expired after {gone - before:.2f}s"
        assert gone - granted <= 4.0, f"lease expired after {gone - granted:.2f}s"
        while time.monotonic() - granted < 3.0:  # well past lease-2's first deadline
            time.sleep(0.1)
        servers.same("get", "--prefix", "e/")
        out = servers.same("lease", "timetolive", "--keys", "<lease-2>", per_side=kept)
        assert "attached keys([e/c])" in out[1], out
    finally:
        kept_alive = stop_all(*keep_alives)
    stopped = time.monotonic()
    try:
        wait_until_gone("e/c", servers, timeout=6)
        assert time.monotonic() - stopped <= 4.0
        # One more write: once the watches print it, they printed all that came before.
        servers.same("put", "e/z", "last")
        for process in watches:
            process.wait_for(lambda lines: lines[-3:] == ["PUT", "e/z", "last"])
    finally:
        outputs = stop_all(*watches)
    for side, lines in enumerate(kept_alive):
        renamed = [servers.rename(side, line) for line in lines]
        assert len(renamed) >= 2 and set(renamed) == {
            "lease <lease-2> keepalived with TTL(2)"}, lines
    assert outputs[0] == [
        "PUT", "e/a", "1", "PUT", "e/b", "2", "PUT", "e/c", "3",
        "DELETE", "e/a", "", "DELETE", "e/b", "", "DELETE", "e/c", "", "PUT", "e/z", "last",
    ], outputs[0]
    assert outputs[1] == outputs[0]
    servers.same("lease", "list")
    out = servers.same("lease", "timetolive", "<lease-1>", per_side=short)
    assert out[1] == "lease <lease-1> already expired\n", out


def wait_until_gone(key: str, servers: Servers, timeout: float) -> None:
    """Poll both servers (concurrently, over gRPC) until `key` is deleted on each."""
    def poll(endpoint: str) -> None:
        deadline = time.monotonic() + timeout
        with Client(endpoint) as client:
            while client.kv.Range(pb.RangeRequest(key=key.encode()), timeout=5).kvs:
                assert time.monotonic() < deadline, f"{key} still there after {timeout}s"
                time.sleep(0.02)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(poll, endpoint) for endpoint in servers.endpoints]:
            done.result()
