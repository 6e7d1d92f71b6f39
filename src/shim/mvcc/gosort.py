"""Go 1.16's unstable ``sort.Sort``, reproduced element for element.

etcd 3.5.1 (built with Go 1.16) orders Range results with ``sort.Sort`` or
``sort.Sort(sort.Reverse(...))``. That sort is not stable: elements that compare
equal can end up in an order no stable sort would give, and clients see that
order. To answer exactly as etcd does, this module performs the same sequence of
comparisons and swaps as Go 1.16's introsort: quicksort with median-of-three
or ninther pivots, heapsort past a depth limit, and a gap-6 shell pass plus
insertion sort for short ranges.

Only the outcome for a given ``less`` matters here, so ``less`` must behave like
the Go one (a strict weak ordering over the same fields).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Less = Callable[[T, T], bool]

# Ranges this long or shorter skip quicksort (shell pass + insertion sort).
_SMALL = 12
# Ranges longer than this pick the pivot as a median of three medians.
_NINTHER = 40


def go_sort(items: list[T], less: Less[T]) -> None:
    """Sort ``items`` in place into the order Go 1.16's ``sort.Sort`` produces."""
    _GoSorter(items, less).sort()


def go_sort_reverse(items: list[T], less: Less[T]) -> None:
    """Sort in place as Go 1.16's ``sort.Sort(sort.Reverse(data))`` does.

    ``sort.Reverse`` only swaps the arguments of Less, so this is ``go_sort`` with
    the flipped comparison (not a reversed ascending result: ties differ).
    """
    _GoSorter(items, lambda x, y: less(y, x)).sort()


def max_depth(n: int) -> int:
    """Depth at which quicksort gives way to heapsort: 2*ceil(lg(n+1))."""
    return 2 * n.bit_length()


class _GoSorter:
    """Index-based Less/Swap over a list, mirroring Go's ``sort.Interface`` use."""

    __slots__ = ("items", "less")

    def __init__(self, items: list[T], less: Less[T]) -> None:
        self.items = items
        self.less = less

    def _lt(self, i: int, j: int) -> bool:
        return self.less(self.items[i], self.items[j])

    def _swap(self, i: int, j: int) -> None:
        items = self.items
        items[i], items[j] = items[j], items[i]

    def sort(self) -> None:
        n = len(self.items)
        self._quick_sort(0, n, max_depth(n))

    # -- small ranges -------------------------------------------------------

    def _insertion_sort(self, a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and self._lt(j, j - 1):
                self._swap(j, j - 1)
                j -= 1

    # -- heapsort fallback --------------------------------------------------

    def _sift_down(self, lo: int, hi: int, first: int) -> None:
        root = lo
        while True:
            child = 2 * root + 1
            if child >= hi:
                return
            if child + 1 < hi and self._lt(first + child, first + child + 1):
                child += 1
            if not self._lt(first + root, first + child):
                return
            self._swap(first + root, first + child)
            root = child

    def _heap_sort(self, a: int, b: int) -> None:
        first, size = a, b - a
        for i in range((size - 1) // 2, -1, -1):
            self._sift_down(i, size, first)
        for i in range(size - 1, -1, -1):
            self._swap(first, first + i)
            self._sift_down(0, i, first)

    # -- quicksort ----------------------------------------------------------

    def _median_of_three(self, m1: int, m0: int, m2: int) -> None:
        """Leave the median of items m0, m1, m2 at m1 (m0 <= m1 <= m2 afterwards)."""
        if self._lt(m1, m0):
            self._swap(m1, m0)
        if self._lt(m2, m1):
            self._swap(m2, m1)
            if self._lt(m1, m0):
                self._swap(m1, m0)

    def _do_pivot(self, lo: int, hi: int) -> tuple[int, int]:
        """Partition [lo, hi); return (mid_lo, mid_hi) bounding the pivot's block.

        Afterwards [lo, mid_lo) holds items not above the pivot, [mid_lo, mid_hi)
        items equal to it, [mid_hi, hi) items above it.
        """
        lt, swap = self._lt, self._swap
        m = (lo + hi) >> 1
        if hi - lo > _NINTHER:
            s = (hi - lo) // 8
            self._median_of_three(lo, lo + s, lo + 2 * s)
            self._median_of_three(m, m - s, m + s)
            self._median_of_three(hi - 1, hi - 1 - s, hi - 1 - 2 * s)
        self._median_of_three(lo, m, hi - 1)

        # The pivot sits at lo. Scan: (lo, a) < pivot, [a, b) <= pivot,
        # [b, c) unseen, [c, hi) > pivot except that hi-1 is only >= pivot.
        pivot = lo
        a, c = lo + 1, hi - 1
        while a < c and lt(a, pivot):
            a += 1
        b = a
        while True:
            while b < c and not lt(pivot, b):
                b += 1
            while b < c and lt(pivot, c - 1):
                c -= 1
            if b >= c:
                break
            swap(b, c - 1)
            b += 1
            c -= 1

        # Few items ended up above the pivot: likely many duplicates of it.
        protect = hi - c < 5
        if not protect and hi - c < (hi - lo) // 4:
            # Probe a few spots for items equal to the pivot.
            dups = 0
            if not lt(pivot, hi - 1):
                swap(c, hi - 1)
                c += 1
                dups += 1
            if not lt(b - 1, pivot):
                b -= 1
                dups += 1
            if not lt(m, pivot):
                swap(m, b - 1)
                b -= 1
                dups += 1
            protect = dups > 1
        if protect:
            # Gather the pivot's equals at the top of the low side: [a, b) is
            # rescanned, leaving [b, c) all equal to the pivot.
            while True:
                while a < b and not lt(b - 1, pivot):
                    b -= 1
                while a < b and lt(a, pivot):
                    a += 1
                if a >= b:
                    break
                swap(a, b - 1)
                a += 1
                b -= 1
        swap(pivot, b - 1)
        return b - 1, c

    def _quick_sort(self, a: int, b: int, depth: int) -> None:
        while b - a > _SMALL:
            if depth == 0:
                self._heap_sort(a, b)
                return
            depth -= 1
            mid_lo, mid_hi = self._do_pivot(a, b)
            # Recurse on the smaller side, keep looping on the larger one.
            if mid_lo - a < b - mid_hi:
                self._quick_sort(a, mid_lo, depth)
                a = mid_hi
            else:
                self._quick_sort(mid_hi, b, depth)
                b = mid_lo
        if b - a > 1:
            # One shell-sort pass with gap 6 (enough since b - a <= 12).
            for i in range(a + 6, b):
                if self._lt(i, i - 6):
                    self._swap(i, i - 6)
            self._insertion_sort(a, b)
