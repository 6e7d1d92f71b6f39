"""bbolt files (etcd's storage format), written whole and read back, with no library.

A shim snapshot is a bbolt file laid out as etcd's, so etcd's own tools (`etcdctl snapshot
status`, `etcdutl`) read it, and shim finds its own database inside. Only what that needs is
here: a writer that lays out buckets of sorted keys once, in one pass (no updates, no free
pages), and a reader of one top-level bucket.

The format, as bbolt reads it (all integers little-endian, pages of ``PAGE_SIZE`` bytes):

- every page starts with a header: its id (u64), flags (u16: branch 1, leaf 2, meta 4,
  freelist 16), element count (u16) and how many more pages it spans (u32, ``overflow``);
- pages 0 and 1 hold the meta (magic, version 2, page size, flags, the root bucket's root
  page and sequence, the freelist page, the high-water page id, the transaction id, and an
  FNV-1a 64 checksum of what precedes it); the valid one with the higher transaction id wins;
- a leaf page holds elements (flags, pos, key size, value size: u32 each; ``pos`` counts from
  the element itself) followed by the keys and values; a branch page holds elements (pos, key
  size, child page id) keyed by each child's first key;
- a bucket is a leaf element flagged 1 whose value is its header (root page id, sequence);
  the top-level buckets are the elements of the tree the meta's root points to.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

# The bucket a shim snapshot keeps its own database in (``shim.mvcc.snapshot_file``).
SHIM_BUCKET = b"shim"
PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2

_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_LEAF = struct.Struct("<IIII")  # flags, pos, key size, value size
_BRANCH = struct.Struct("<IIQ")  # pos, key size, child page id
_META = struct.Struct("<IIIIQQQQQ")  # magic .. txid: what the checksum covers
_BUCKET = struct.Struct("<QQ")  # root page id, sequence
_BRANCH_FLAG, _LEAF_FLAG, _META_FLAG, _FREELIST_FLAG = 0x01, 0x02, 0x04, 0x10
_BUCKET_LEAF = 0x01
_FIRST_DATA_PAGE = 3  # after the two metas and the (empty) freelist
_MAX_DEPTH = 64  # far more levels than any real tree (each level multiplies by ~100)


class BoltError(Exception):
    """A file that is not a readable bbolt database (one line)."""


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class BoltWriter:
    """Writes a bbolt file to ``out`` (a new, empty file opened for writing and seeking):
    ``bucket`` each top-level bucket in name order, then ``close``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._next = _FIRST_DATA_PAGE
        self._buckets: list[tuple[bytes, int]] = []

    def bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> None:
        """A top-level bucket holding ``items`` (keys ascending, each once)."""
        if self._buckets and name <= self._buckets[-1][0]:
            raise ValueError("buckets must come in ascending name order")
        self._buckets.append((name, self._tree((k, v, 0) for k, v in items)))

    def close(self) -> int:
        """Write the root and the metas; returns the file's size in bytes."""
        root = self._tree(
            (name, _BUCKET.pack(page, 0), _BUCKET_LEAF) for name, page in self._buckets
        )
        high_water = self._next
        self._write_page(2, _HEADER.pack(2, _FREELIST_FLAG, 0, 0))
        for txid in (0, 1):
            fields = _META.pack(MAGIC, VERSION, PAGE_SIZE, 0, root, 0, 2, high_water, txid)
            meta = fields + struct.pack("<Q", _fnv64a(fields))
            self._write_page(txid, _HEADER.pack(txid, _META_FLAG, 0, 0) + meta)
        return high_water * PAGE_SIZE

    def _tree(self, items: Iterable[tuple[bytes, bytes, int]]) -> int:
        """Write a B+tree of ``items`` (sorted) bottom up; returns its root page id."""
        level: list[tuple[bytes, int]] = []
        page: list[tuple[bytes, bytes, int]] = []
        size = _HEADER.size
        previous: bytes | None = None
        for key, value, flags in items:
            if previous is not None and key <= previous:
                raise ValueError("keys must be ascending and unique")
            previous = key
            need = _LEAF.size + len(key) + len(value)
            if page and size + need > PAGE_SIZE:
                level.append(self._leaf(page))
                page, size = [], _HEADER.size
            page.append((key, value, flags))
            size += need
        if page or not level:
            level.append(self._leaf(page))
        while len(level) > 1:
            level = self._branches(level)
        return level[0][1]

    def _leaf(self, items: list[tuple[bytes, bytes, int]]) -> tuple[bytes, int]:
        elements, data = [], []
        offset = _LEAF.size * len(items)  # from the first element to the first key
        for i, (key, value, flags) in enumerate(items):
            elements.append(_LEAF.pack(flags, offset - i * _LEAF.size, len(key), len(value)))
            data.append(key)
            data.append(value)
            offset += len(key) + len(value)
        body = b"".join(elements) + b"".join(data)
        first = items[0][0] if items else b""
        return first, self._append(_LEAF_FLAG, len(items), body)

    def _branches(self, children: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        parents: list[tuple[bytes, int]] = []
        group: list[tuple[bytes, int]] = []
        size = _HEADER.size
        for key, page in children:
            need = _BRANCH.size + len(key)
            if len(group) >= 2 and size + need > PAGE_SIZE:
                parents.append(self._branch(group))
                group, size = [], _HEADER.size
            group.append((key, page))
            size += need
        parents.append(self._branch(group))
        return parents

    def _branch(self, children: list[tuple[bytes, int]]) -> tuple[bytes, int]:
        elements, keys = [], []
        offset = _BRANCH.size * len(children)
        for i, (key, page) in enumerate(children):
            elements.append(_BRANCH.pack(offset - i * _BRANCH.size, len(key), page))
            keys.append(key)
            offset += len(key)
        body = b"".join(elements) + b"".join(keys)
        return children[0][0], self._append(_BRANCH_FLAG, len(children), body)

    def _append(self, flags: int, count: int, body: bytes) -> int:
        page = self._next
        pages = -(-(_HEADER.size + len(body)) // PAGE_SIZE)
        self._write_page(page, _HEADER.pack(page, flags, count, pages - 1) + body)
        self._next += pages
        return page

    def _write_page(self, page: int, content: bytes) -> None:
        padding = -len(content) % PAGE_SIZE
        self._out.seek(page * PAGE_SIZE)
        self._out.write(content + bytes(padding))


def is_bolt(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 32 bytes or more) is bbolt."""
    return len(head) >= _HEADER.size + 8 and struct.unpack_from(
        "<I", head, _HEADER.size
    )[0] == MAGIC


class BoltReader:
    """Reads the top-level buckets of a bbolt file (a file that may end with a trailer)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._size = source.seek(0, io.SEEK_END)
        self._page_size, self._root = self._meta()

    def _meta(self) -> tuple[int, int]:
        best: tuple[int, int, int] | None = None  # txid, page size, root
        page_size = PAGE_SIZE
        for number in (0, 1):
            self._source.seek(number * page_size)
            raw = self._source.read(_HEADER.size + _META.size + 8)
            if len(raw) < _HEADER.size + _META.size + 8:
                continue
            fields = raw[_HEADER.size:_HEADER.size + _META.size]
            magic, version, size, _, root, _, _, _, txid = _META.unpack(fields)
            (checksum,) = struct.unpack_from("<Q", raw, _HEADER.size + _META.size)
            if magic != MAGIC or version != VERSION or checksum != _fnv64a(fields):
                continue
            if size < 512 or size & (size - 1):
                continue  # no page size bbolt uses
            page_size = size
            if best is None or txid > best[0]:
                best = (txid, size, root)
        if best is None:
            raise BoltError("not a bbolt database (no valid meta page)")
        return best[1], best[2]

    def buckets(self) -> list[bytes]:
        return [key for key, _, _ in self._items(self._root)]

    def bucket(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The items of the top-level bucket ``name`` in key order (none if it is absent)."""
        for key, value, flags in self._items(self._root):
            if key == name and flags & _BUCKET_LEAF:
                if len(value) < _BUCKET.size:
                    raise BoltError(f"bucket {name!r} has no header")
                root, _ = _BUCKET.unpack_from(value)
                # Root 0: a small bucket whose one leaf page is inline, after the header.
                items = self._items(root) if root else self._inline(value[_BUCKET.size:])
                for item_key, item_value, _ in items:
                    yield item_key, item_value
                return

    @staticmethod
    def _inline(page: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        if len(page) < _HEADER.size:
            raise BoltError("an inline bucket is cut short")
        _, flags, count, _ = _HEADER.unpack_from(page)
        if not flags & _LEAF_FLAG:
            raise BoltError("an inline bucket is not a leaf page")
        return _leaf_items(page[_HEADER.size:], count)

    def _page(self, page: int) -> tuple[int, int, bytes]:
        if page * self._page_size >= self._size:  # a damaged id: no seek to a wild offset
            raise BoltError(f"page {page} is past the end of the file")
        self._source.seek(page * self._page_size)
        head = self._source.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise BoltError(f"page {page} is past the end of the file")
        _, flags, count, overflow = _HEADER.unpack(head)
        wanted = (overflow + 1) * self._page_size - _HEADER.size
        # No more than the file holds: a damaged overflow count would ask for gigabytes.
        body = self._source.read(min(wanted, self._size - self._source.tell()))
        return flags, count, body

    def _items(self, page: int, depth: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
        if depth > _MAX_DEPTH:
            raise BoltError(f"page {page} is deeper than any tree bbolt writes (a cycle?)")
        flags, count, body = self._page(page)
        if flags & _LEAF_FLAG:
            yield from _leaf_items(body, count)
        elif flags & _BRANCH_FLAG:
            if count * _BRANCH.size > len(body):
                raise BoltError(f"page {page} holds more elements than fit in it")
            for i in range(count):
                _, _, child = _BRANCH.unpack_from(body, i * _BRANCH.size)
                yield from self._items(child, depth + 1)
        else:
            raise BoltError(f"page {page} is neither a branch nor a leaf")


def _leaf_items(body: bytes, count: int) -> Iterator[tuple[bytes, bytes, int]]:
    """A leaf page's (key, value, flags), ``body`` being the page after its header."""
    if count * _LEAF.size > len(body):
        raise BoltError("a leaf page holds more elements than fit in it")
    for i in range(count):
        at = i * _LEAF.size
        flags, pos, key_size, value_size = _LEAF.unpack_from(body, at)
        start = at + pos
        end = start + key_size + value_size
        if end > len(body):
            raise BoltError("a leaf element points past its page")
        yield body[start:start + key_size], body[start + key_size:end], flags
