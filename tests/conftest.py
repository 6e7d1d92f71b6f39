"""Shared fixtures: real etcd servers, shim servers and gRPC clients to them.

When a test fails, the log tail of every server it used is added to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.support import Client, EtcdServer, ServerProcess, ShimServer
from tests.support.installed import installed_copy_problem
from tests.support.postgres import (
    PostgresServer,
    postgres_endpoint,
    shared_postgres,
    stop_shared_postgres,
)

# Property tests run the same examples on every run ("every test can fail; none depends on
# luck"): hypothesis derives its seed from each test, and no example database replays earlier
# runs' failures. `--hypothesis-profile explore` draws new examples each run (the seed is
# printed with a failure; `--hypothesis-seed N` repeats it).
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile("deterministic")

# Datastores shim can run on; "sqlite-processes" is SQLite served by `--processes 2` (a store
# process and two serving processes on one port). The modules below run their `shim`,
# `shim_module` and `shim_factory` servers once per datastore they list (`--datastore` narrows
# the choice); every other module uses SQLite in one process.
DATASTORES = ("sqlite", "postgres", "sqlite-processes")
DATASTORE_ARGS = {"sqlite-processes": ["--processes", "2"]}
MODULE_DATASTORES = {
    "tests.test_differential_kv": DATASTORES,
    "tests.test_kube_apiserver_contract": DATASTORES,
    "tests.test_watch_catchup": DATASTORES,
    "tests.test_edges": ("sqlite", "postgres"),
    "tests.test_differential_watch": ("sqlite", "sqlite-processes"),
    "tests.test_watch_concurrency": ("sqlite", "sqlite-processes"),
    "tests.test_etcdctl_watch_lease": ("sqlite", "sqlite-processes"),
    "tests.test_lock_election": ("sqlite", "sqlite-processes"),
}


def pytest_configure(config: pytest.Config) -> None:
    problem = installed_copy_problem()
    if problem:
        pytest.exit(f"{problem}: run ./tests/run, which installs this tree first", returncode=3)
    config.addinivalue_line(
        "markers", "harness: checks the test harness itself (e.g. etcd against etcd)"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--datastore", action="append", choices=DATASTORES, default=None,
        help="datastore(s) for the modules that run on several "
        f"({', '.join(sorted(MODULE_DATASTORES))}); repeatable; default: all",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    datastores = MODULE_DATASTORES.get(metafunc.module.__name__)
    if "datastore" in metafunc.fixturenames and datastores:
        chosen = metafunc.config.getoption("--datastore") or list(DATASTORES)
        metafunc.parametrize(
            "datastore", [d for d in datastores if d in chosen], indirect=True, scope="module"
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's throwaway PostgreSQL cluster (started on first use)."""
    yield shared_postgres()
    stop_shared_postgres()


@pytest.fixture(scope="module")
def datastore(request: pytest.FixtureRequest) -> str:
    """The datastore of the shim fixtures: "sqlite" unless the module runs on every one."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="module")
def datastore_args(datastore: str) -> list[str]:
    """Command-line arguments the module's datastore adds to every shim server."""
    return list(DATASTORE_ARGS.get(datastore, []))


@pytest.fixture(scope="module")
def new_datastore_endpoint(
    request: pytest.FixtureRequest, datastore: str
) -> Callable[[], str | None]:
    """Makes a fresh endpoint of the module's datastore for each shim server: None for
    SQLite (the server's own file in its workdir), a new database for PostgreSQL."""
    if datastore == "postgres":
        request.getfixturevalue("postgres")
        return postgres_endpoint
    return lambda: None


class ServerFactory:
    """Starts servers on demand inside one directory; stops them all at teardown."""

    def __init__(self, make: Callable[..., ServerProcess], root: Path) -> None:
        self._make = make
        self._root = root
        self.servers: list[ServerProcess] = []

    def __call__(self, **kwargs: Any) -> Any:
        workdir = self._root / f"{len(self.servers)}"
        server = self._make(workdir, **kwargs)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd 3.5 shared by the tests of one module."""
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def shim(
    tmp_path: Path, new_datastore_endpoint: Callable[[], str | None], datastore_args: list[str]
) -> Iterator[ShimServer]:
    """A fresh shim server on a fresh SQLite file (or PostgreSQL database), for one test."""
    with ShimServer(
        tmp_path / "shim", datastore_endpoint=new_datastore_endpoint(), extra_args=datastore_args
    ) as server:
        yield server


@pytest.fixture(scope="module")
def shim_module(
    tmp_path_factory: pytest.TempPathFactory,
    new_datastore_endpoint: Callable[[], str | None],
    datastore_args: list[str],
) -> Iterator[ShimServer]:
    """A shim server shared by the tests of one module."""
    with ShimServer(
        tmp_path_factory.mktemp("shim"), datastore_endpoint=new_datastore_endpoint(),
        extra_args=datastore_args,
    ) as server:
        yield server


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdServer]]:
    """`etcd_factory(extra_args=...)` starts another fresh etcd (stopped after the test)."""
    factory = ServerFactory(EtcdServer, tmp_path / "etcd")
    yield factory
    factory.stop_all()


@pytest.fixture
def shim_factory(
    tmp_path: Path, new_datastore_endpoint: Callable[[], str | None], datastore_args: list[str]
) -> Iterator[Callable[..., ShimServer]]:
    """`shim_factory(datastore_endpoint=..., extra_args=...)` starts another fresh shim (on
    the module's datastore unless an endpoint is given)."""

    def make(workdir: Path, **kwargs: Any) -> ShimServer:
        if "datastore_endpoint" not in kwargs:
            kwargs["datastore_endpoint"] = new_datastore_endpoint()
            kwargs["extra_args"] = [*datastore_args, *kwargs.get("extra_args", ())]
        return ShimServer(workdir, **kwargs)

    factory = ServerFactory(make, tmp_path / "shims")
    yield factory
    factory.stop_all()


@pytest.fixture
def etcd_client(etcd: EtcdServer) -> Iterator[Client]:
    with Client(etcd.endpoint) as client:
        yield client


@pytest.fixture
def shim_client(shim: ShimServer) -> Iterator[Client]:
    with Client(shim.endpoint) as client:
        yield client


@pytest.fixture
def shim_module_client(shim_module: ShimServer) -> Iterator[Client]:
    with Client(shim_module.endpoint) as client:
        yield client


def _servers_used(item: pytest.Item) -> list[ServerProcess]:
    servers: list[ServerProcess] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ServerProcess):
            servers.append(value)
        elif isinstance(value, ServerFactory):
            servers.extend(value.servers)
    return servers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        for server in _servers_used(item):
            report.sections.append((f"{server.name} log {server.log_path}", server.log_tail(60)))
