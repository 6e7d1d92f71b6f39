"""etcd3, the Node.js etcd client from npm (github.com/microsoft/etcd3), driving shim.

The client runs as a `node` program of its own, installed from the npm registry into a
temporary directory (npm's cache makes later runs quick), and prints what it observed as JSON.
The same program runs against a real etcd, which proves the expectations. Skipped only where
node or npm is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import EtcdServer, ServerProcess, ShimServer
from tests.support.waits import wait_until

ETCD3_PACKAGE = "etcd3@1.1.2"

# Holds a lease (keep-alives on a stream, as the client does by itself) and a watcher, prints
# {"ready": true}, waits for a line on stdin (the server was restarted meanwhile), then
# writes through a second client and reports what the first one saw.
CLIENT_PROGRAM = r"""
const readline = require('readline');
const { Etcd3 } = require('etcd3');

const [endpoint] = process.argv.slice(2);
const input = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise(resolve => input.once('line', resolve));
const until = (condition, what, ms = 20000) => new Promise((resolve, reject) => {
  const deadline = Date.now() + ms;
  const poll = () => {
    if (condition()) return resolve();
    if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
    setTimeout(poll, 20);
  };
  poll();
});

async function main() {
  const client = new Etcd3({ hosts: endpoint });
  await client.delete().prefix('/js/');
  const lease = client.lease(5);
  let lost = null;
  let renewedAfterRestart = false;
  let restarted = false;
  lease.on('lost', err => { lost = err.message; });
  lease.on('keepaliveSucceeded', () => { if (restarted) renewedAfterRestart = true; });
  await lease.put('/js/leased').value('held');

  const events = [];
  const watcher = await client.watch().prefix('/js/w/').withPreviousKV().create();
  const text = kv => (kv ? kv.value.toString() : null);
  watcher.on('put', (kv, prev) => events.push(['put', kv.key.toString(), text(kv), text(prev)]));
  watcher.on('delete', kv => events.push(['delete', kv.key.toString()]));
  await client.put('/js/w/a').value('1');
  await until(() => events.length === 1, 'the first event');
  console.log(JSON.stringify({ ready: true }));

  await nextLine();
  restarted = true;
  const other = new Etcd3({ hosts: endpoint });
  await other.put('/js/w/a').value('2');
  await other.put('/js/w/b').value('3');
  await other.delete().key('/js/w/a');
  await until(() => events.length === 4, 'the events written after the restart');
  await until(() => renewedAfterRestart || lost !== null, 'a keep-alive after the restart');
  const ttl = await other.leaseClient.leaseTimeToLive({ ID: await lease.grant() });
  console.log(JSON.stringify({
    events,
    lost,
    leased: await other.get('/js/leased').string(),
    lease_alive: Number(ttl.TTL) > 0,
  }));
  await watcher.cancel();
  lease.release();
  other.close();
  client.close();
}

main().then(() => process.exit(0), err => { console.error(err); process.exit(1); });
"""


@pytest.fixture(scope="module")
def etcd3_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client program, beside the etcd3 package installed by npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the etcd3 (Node.js) client")
    where = tmp_path_factory.mktemp("etcd3-js")
    (where / "package.json").write_text('{"private": true}\n')
    installed = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", ETCD3_PACKAGE],
        cwd=where, capture_output=True, text=True, timeout=180,
    )
    assert installed.returncode == 0, f"npm install {ETCD3_PACKAGE} failed:\n{installed.stderr}"
    program = where / "client.js"
    program.write_text(CLIENT_PROGRAM)
    return program


@pytest.fixture(params=["etcd", "shim"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real etcd, then a shim, each of its own: the test restarts it."""
    made: ServerProcess = (
        EtcdServer(tmp_path / "etcd") if request.param == "etcd" else ShimServer(tmp_path / "shim")
    )
    with made.start():
        yield made


def restart(server: ServerProcess) -> float:
    """SIGTERM, wait for the exit, start again on the same data and port; the seconds the
    stop took."""
    stopping = time.monotonic()
    server.terminate()
    wait_until(lambda: not server.running, 30, f"{server.name} to stop")
    took = time.monotonic() - stopping
    assert isinstance(server, EtcdServer | ShimServer)
    server.restart()
    return took


def test_lease_and_watch_outlive_a_server_restart(
    etcd3_program: Path, server: ServerProcess
) -> None:
    """A client holding a lease and a watcher across a restart: the stop does not wait on
    its streams (shim used to keep the lease's keep-alive stream for its whole 10 s grace),
    then the lease is still kept alive and the watcher resumes where it was, missing nothing.
    """
    endpoint = server.endpoint  # type: ignore[attr-defined]
    child = subprocess.Popen(
        ["node", str(etcd3_program), endpoint], cwd=etcd3_program.parent,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    watchdog = threading.Timer(120, child.kill)
    watchdog.start()
    try:
        ready = child.stdout.readline()
        assert json.loads(ready or "{}") == {"ready": True}, child.communicate()[1]
        stop_seconds = restart(server)
        out, err = child.communicate("restarted\n")
    finally:
        watchdog.cancel()
        child.kill()
    assert child.returncode == 0, f"etcd3 program failed:\n{err}"
    seen: dict[str, Any] = json.loads(out.strip().splitlines()[-1])

    assert stop_seconds < 5, f"{server.name} took {stop_seconds:.1f} s to stop"
    assert seen["events"] == [
        ["put", "/js/w/a", "1", None],
        ["put", "/js/w/a", "2", "1"],
        ["put", "/js/w/b", "3", None],
        ["delete", "/js/w/a"],
    ]
    assert seen["lost"] is None
    assert seen["leased"] == "held"
    assert seen["lease_alive"] is True
