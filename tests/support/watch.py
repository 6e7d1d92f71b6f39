"""The tests' one Watch stream client: a bidirectional gRPC Watch call whose requests go out in
call order and whose responses a thread records, each with the time it arrived.

Waiting is always for a condition on what arrived (``wait_for``), never for a time in which
"nothing else came": a test that must know a stream has caught up waits for a later, positive
sign (an event it wrote after the others, or a progress notification at the final revision).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Self

import grpc

from shim.pb import kv_pb2
from shim.pb import rpc_pb2 as pb

from .client import Client

# Responses to RequestProgress carry this watch id (etcd 3.5: not one watcher's response).
PROGRESS_WATCH_ID = -1
CREATE_TIMEOUT = 10.0
# etcd syncs catching-up watchers every 100 ms; quiet this long means it has nothing pending.
QUIET_SECONDS = 0.3


class WatchStream:
    """One Watch stream on ``client``. ``label`` names it in failure messages; ``metadata``
    goes with the call (e.g. kube-apiserver's ``hasleader`` requirement)."""

    def __init__(
        self,
        client: Client,
        label: str = "",
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.label = label
        self._requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        self._cond = threading.Condition()
        self._responses: list[pb.WatchResponse] = []
        self._arrivals: list[float] = []  # time.monotonic() when each response came
        self._event_counts: dict[int, int] = {}  # watch id -> events received
        self._closing = False
        self._ended = False  # the server ended the stream (or it failed: see error)
        self._taken = 0  # responses handed out by take()
        self.last_activity = time.monotonic()  # last request sent or response received
        self.error: grpc.RpcError | None = None
        self._call = client.watch.Watch(self._outgoing(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name=f"watch {label}", daemon=True)
        self._reader.start()

    # -- the call --------------------------------------------------------------------------

    def _outgoing(self) -> Iterator[pb.WatchRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._cond:
                    now = time.monotonic()
                    self._responses.append(response)
                    self._arrivals.append(now)
                    counts = self._event_counts
                    counts[response.watch_id] = counts.get(response.watch_id, 0) + len(
                        response.events
                    )
                    self.last_activity = now
                    self._cond.notify_all()
        except grpc.RpcError as error:
            with self._cond:
                # Our own close() cancels the call; anything else is the stream failing.
                if not (self._closing and error.code() == grpc.StatusCode.CANCELLED):
                    self.error = error
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def close(self) -> None:
        self._closing = True
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------

    def send(self, request: pb.WatchRequest) -> None:
        with self._cond:
            self.last_activity = time.monotonic()
        self._requests.put(request)

    def send_create(self, request: pb.WatchCreateRequest | None = None, **fields: object) -> None:
        """Ask for a watcher without waiting for the answer."""
        create = request if request is not None else pb.WatchCreateRequest(**fields)  # type: ignore[arg-type]  # fields: any of its own
        self.send(pb.WatchRequest(create_request=create))

    def create(
        self,
        request: pb.WatchCreateRequest | None = None,
        timeout: float = CREATE_TIMEOUT,
        **fields: object,
    ) -> pb.WatchResponse:
        """Ask for a watcher and return its ``created`` response (which may say canceled)."""
        with self._cond:
            seen = sum(r.created for r in self._responses)
        self.send_create(request, **fields)
        self.wait_for(lambda rs: sum(r.created for r in rs) > seen, timeout, "a created response")
        with self._cond:
            return [r for r in self._responses if r.created][seen]

    def cancel(self, watch_id: int) -> None:
        self.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    def request_progress(self) -> None:
        self.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    # -- what arrived ----------------------------------------------------------------------

    @property
    def responses(self) -> list[pb.WatchResponse]:
        """Every response so far, in arrival order (a copy)."""
        with self._cond:
            return list(self._responses)

    def of(self, watch_id: int) -> list[pb.WatchResponse]:
        """The responses of one watcher after its ``created`` response."""
        with self._cond:
            return [r for r in self._responses if r.watch_id == watch_id and not r.created]

    def events(self, watch_id: int | None = None) -> list[kv_pb2.Event]:
        """Every event so far (of one watcher, or of all)."""
        with self._cond:
            return [e for r in self._responses
                    if watch_id is None or r.watch_id == watch_id for e in r.events]

    def timed_events(self) -> list[tuple[float, kv_pb2.Event]]:
        """(time.monotonic() at arrival, event) for every event so far."""
        with self._cond:
            return [(at, e) for at, r in zip(self._arrivals, self._responses, strict=True)
                    for e in r.events]

    def event_count(self, watch_id: int) -> int:
        with self._cond:
            return self._event_counts.get(watch_id, 0)

    def wait_for(
        self,
        predicate: Callable[[list[pb.WatchResponse]], bool],
        timeout: float,
        what: str,
    ) -> None:
        """Until ``predicate(responses so far)`` holds; AssertionError at the timeout or when
        the stream fails first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._responses):
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    how = "timed out" if left <= 0 else "the stream ended"
                    raise AssertionError(
                        f"watch {self.label}: {how} waiting for {what}; stream error "
                        f"{self.error}; {len(self._responses)} responses, the last: "
                        f"{self._responses[-3:]}"
                    )
                self._cond.wait(left)

    def take(self, count: int, timeout: float = CREATE_TIMEOUT) -> list[pb.WatchResponse]:
        """The next ``count`` responses that no earlier take() returned, in arrival order
        (waiting for them)."""
        with self._cond:
            start = self._taken
        self.wait_for(lambda rs: len(rs) >= start + count, timeout, f"{count} more responses")
        with self._cond:
            self._taken = start + count
            return self._responses[start:start + count]

    def wait_for_events(self, count: int, timeout: float) -> list[tuple[float, kv_pb2.Event]]:
        """Until ``count`` events have arrived; returns them with their arrival times."""
        self.wait_for(lambda rs: sum(len(r.events) for r in rs) >= count, timeout,
                      f"{count} events")
        return self.timed_events()

    def check_open(self) -> None:
        if self.error is not None:
            raise AssertionError(
                f"watch stream {self.label} failed: {self.error.code()} {self.error.details()}"
            )


def wait_quiet(
    streams: Iterable[WatchStream], quiet: float = QUIET_SECONDS, timeout: float = 20.0
) -> None:
    """Until no stream has sent or received anything for ``quiet`` seconds.

    For comparing two servers response by response (tests/support/watch_diff.py): a pause
    separates phases whose responses would otherwise interleave by timing, which etcd leaves
    open. Elsewhere, wait for a positive sign instead (see the module docstring).
    """
    streams = list(streams)
    deadline = time.monotonic() + timeout
    while True:
        latest = max((s.last_activity for s in streams), default=0.0)
        idle = time.monotonic() - latest
        if idle >= quiet:
            for stream in streams:
                stream.check_open()
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"watch streams still busy after {timeout:.0f}s")
        time.sleep(min(quiet - idle, 0.05) + 0.001)
