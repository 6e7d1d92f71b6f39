"""JSON as etcd's gateway (Go's encoding/json) reads and writes it, where Python's differs.

- ``decode_first``: the first JSON value of a body, as Go's ``json.Decoder`` reads it (the rest
  of the body is not looked at); numbers keep their literal text (``JsonNumber``).
- ``syntax_error``: Go's message for malformed JSON ("invalid character 'g' looking for
  beginning of value", "unexpected EOF", ...): Python's parser finds that the text is bad,
  then this scanner, which follows the states of Go's, says why in Go's words. It runs only
  on bad input.
- ``go_string`` / ``go_quote``: Go's JSON string escaping (HTML characters escaped) and
  ``strconv.Quote``, for the texts etcd's error messages contain.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any


class JsonNumber:
    """A JSON number as written: Go reports a number it cannot use by its literal text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"JsonNumber({self.text})"


class JsonSyntaxError(ValueError):
    """Malformed JSON; the message is Go's."""


class _NotJson(Exception):
    """NaN / Infinity: Python reads them, JSON (and Go) does not."""


def _no_constants(name: str) -> Any:
    raise _NotJson(name)


_DECODER = json.JSONDecoder(
    parse_int=JsonNumber, parse_float=JsonNumber, parse_constant=_no_constants
)
_SPACE = b" \t\r\n"


def decode_first(data: bytes) -> tuple[Any, int] | None:
    """The first JSON value in ``data`` and the offset just after it, or None if ``data`` holds
    only white space (Go's io.EOF: the empty request). Raises JsonSyntaxError."""
    start = len(data) - len(data.lstrip(_SPACE))
    if start == len(data):
        return None
    text = data.decode("utf-8", errors="replace")  # Go reads bad UTF-8 in strings as U+FFFD
    # Offsets below are in characters of ``text``; map back to bytes at the end.
    char_start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, end = _DECODER.raw_decode(text, char_start)
    except (ValueError, _NotJson, RecursionError):
        raise JsonSyntaxError(syntax_error(data, stream=True) or "invalid JSON") from None
    return value, len(text[:end].encode("utf-8", errors="surrogatepass"))


def value_kind(value: Any) -> str:
    """The JSON type as Go's "cannot unmarshal X into ..." names it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, JsonNumber):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


# --- Go's scanner, for its error messages ----------------------------------------------------

MAX_DEPTH = 10000
_KEY, _VALUE, _ARRAY = 0, 1, 2
_LITERALS = {ord("t"): "true", ord("f"): "false", ord("n"): "null"}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
_ESCAPES = frozenset(b'bfnrt\\/"')


def syntax_error(data: bytes, stream: bool) -> str | None:
    """Go's error for ``data``: as ``json.Decoder`` reads one value (``stream``), or as
    ``json.Unmarshal`` reads the whole text. None if Go finds nothing wrong."""
    scanner = _Scanner(stream)
    for c in data:
        error = scanner.step(c)
        if error is not None:
            return error
        if stream and scanner.complete():
            return None
    if scanner.complete_at_eof():
        return None
    if stream:
        return "unexpected EOF" if scanner.started else None
    return "unexpected end of JSON input"


_NUMBER_ENDS = ("one", "zero", "dot0", "e0")


class _Scanner:
    """The states of Go's encoding/json scanner; ``step`` returns an error message or None."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.state = "begin-value"
        self.stack: list[int] = []
        self.literal = ""
        self.literal_at = 0
        self.hex_left = 0
        self.started = False

    def complete(self) -> bool:
        """A top-level value has ended (stream mode stops there)."""
        return not self.stack and self.state in ("end-value", "done")

    def complete_at_eof(self) -> bool:
        # A number at the top level is complete at the end of the input.
        return not self.stack and self.state in ("end-value", "end-top", "done", *_NUMBER_ENDS)

    def _error(self, c: int, context: str) -> str:
        return f"invalid character {quote_char(c)} {context}"

    def _push(self, c: int, kind: int) -> str | None:
        self.stack.append(kind)
        if len(self.stack) > MAX_DEPTH:
            return self._error(c, "exceeded max depth")
        return None

    def step(self, c: int) -> str | None:
        state = self.state
        if state in ("begin-value", "begin-value-or-empty"):
            if c in _SPACE:
                return None
            if state == "begin-value-or-empty" and c == ord("]"):
                return self._end_value(c)
            return self._begin_value(c)
        if state in ("begin-string-or-empty", "begin-string"):
            if c in _SPACE:
                return None
            if state == "begin-string-or-empty" and c == ord("}"):
                self.stack[-1] = _VALUE
                return self._end_value(c)
            if c == ord('"'):
                self.state = "in-string"
                return None
            return self._error(c, "looking for beginning of object key string")
        if state == "end-value":
            return self._end_value(c)
        if state == "end-top":
            if c in _SPACE:
                return None
            return self._error(c, "after top-level value")
        if state == "in-string":
            if c == ord('"'):
                self.state = "end-value"
            elif c == ord("\\"):
                self.state = "in-string-escape"
            elif c < 0x20:
                return self._error(c, "in string literal")
            return None
        if state == "in-string-escape":
            if c in _ESCAPES:
                self.state = "in-string"
            elif c == ord("u"):
                self.state, self.hex_left = "in-string-hex", 4
            else:
                return self._error(c, "in string escape code")
            return None
        if state == "in-string-hex":
            if c not in _HEX:
                return self._error(c, "in \\u hexadecimal character escape")
            self.hex_left -= 1
            if self.hex_left == 0:
                self.state = "in-string"
            return None
        if state == "neg":
            if c == ord("0"):
                self.state = "zero"
            elif c in _DIGITS:
                self.state = "one"
            else:
                return self._error(c, "in numeric literal")
            return None
        if state == "one" and c in _DIGITS:
            return None
        if state in ("one", "zero"):
            if c == ord("."):
                self.state = "dot"
                return None
            if c in b"eE":
                self.state = "e"
                return None
            return self._end_value(c)
        if state == "dot":
            if c not in _DIGITS:
                return self._error(c, "after decimal point in numeric literal")
            self.state = "dot0"
            return None
        if state == "dot0":
            if c in _DIGITS:
                return None
            if c in b"eE":
                self.state = "e"
                return None
            return self._end_value(c)
        if state == "e" and c in b"+-":
            self.state = "e-sign"
            return None
        if state in ("e", "e-sign"):
            if c not in _DIGITS:
                return self._error(c, "in exponent of numeric literal")
            self.state = "e0"
            return None
        if state == "e0":
            if c in _DIGITS:
                return None
            return self._end_value(c)
        if state == "literal":
            expected = self.literal[self.literal_at]
            if c != ord(expected):
                expecting = quote_char(ord(expected))
                return self._error(c, f"in literal {self.literal} (expecting {expecting})")
            self.literal_at += 1
            if self.literal_at == len(self.literal):
                self.state = "end-value"
            return None
        raise AssertionError(state)

    def _begin_value(self, c: int) -> str | None:
        self.started = True
        if c == ord("{"):
            self.state = "begin-string-or-empty"
            return self._push(c, _KEY)
        if c == ord("["):
            self.state = "begin-value-or-empty"
            return self._push(c, _ARRAY)
        if c == ord('"'):
            self.state = "in-string"
        elif c == ord("-"):
            self.state = "neg"
        elif c == ord("0"):
            self.state = "zero"
        elif c in _DIGITS:
            self.state = "one"
        elif c in _LITERALS:
            self.state, self.literal, self.literal_at = "literal", _LITERALS[c], 1
        else:
            return self._error(c, "looking for beginning of value")
        return None

    def _end_value(self, c: int) -> str | None:
        if not self.stack:
            if self.stream:  # the decoder stops at the end of the value: ``c`` is not read
                self.state = "done"
                return None
            self.state = "end-top"
            return self.step(c)
        self.state = "end-value"
        if c in _SPACE:
            return None
        top = self.stack[-1]
        if top == _KEY:
            if c == ord(":"):
                self.stack[-1], self.state = _VALUE, "begin-value"
                return None
            return self._error(c, "after object key")
        if top == _VALUE:
            if c == ord(","):
                self.stack[-1], self.state = _KEY, "begin-string"
                return None
            if c == ord("}"):
                self.stack.pop()
                return None
            return self._error(c, "after object key:value pair")
        if c == ord(","):
            self.state = "begin-value"
            return None
        if c == ord("]"):
            self.stack.pop()
            return None
        return self._error(c, "after array element")


# --- quoting and escaping --------------------------------------------------------------------

_C_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def _quote_rune(r: int) -> str:
    """One character as Go's strconv.Quote writes it (inside the quotes)."""
    if r == ord("\\"):
        return "\\\\"
    if r == ord('"'):
        return '\\"'
    if r < 0x80:
        if 0x20 <= r < 0x7F:
            return chr(r)
        return _C_ESCAPES.get(r, f"\\x{r:02x}")
    ch = chr(r)
    if 0xDC80 <= r <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{r - 0xDC00:02x}"
    if unicodedata.category(ch)[0] in "LMNPS":
        return ch
    return f"\\u{r:04x}" if r < 0x10000 else f"\\U{r:08x}"


def quote_char(c: int) -> str:
    """Go's quoteChar: a byte of the input, as the scanner names it ('g', '\\n', 'Ã')."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    return f"'{_quote_rune(c)}'"


def go_quote(raw: bytes) -> str:
    """Go's strconv.Quote (what %q prints)."""
    text = raw.decode("utf-8", errors="surrogateescape")
    return '"' + "".join(_quote_rune(ord(ch)) for ch in text) + '"'


_MUST_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def go_string(text: str) -> str:
    """A JSON string as Go's encoding/json writes it (HTML characters escaped too)."""
    return '"' + _MUST_ESCAPE.sub(
        lambda m: _SHORT_ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), text
    ) + '"'
