"""How every shim process logs: plain lines, or one JSON object per line (--log-format)."""

from __future__ import annotations

import json
import logging
import re
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the error, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class AnswerNotSent(logging.Filter):
    """grpcio logs an ERROR with a traceback (``ExecuteBatchError``) when a unary answer cannot
    be sent because the call has already ended: the client reset it, say, refusing an answer
    over its receive limit, or it timed out meanwhile. The client has its status; etcd logs
    nothing then. Here it is one debug line, or nothing at the levels above."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ != "ExecuteBatchError":
            return True
        if not logging.getLogger("shim").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        named = re.search(r"\[(/[^\]]+)\]", record.getMessage())  # "... method [/pkg.Svc/Method]"
        method = named.group(1) if named else "a call"
        record.msg = "the answer to %s was not sent: the call had ended (the client went away)"
        record.args = (method,)
        record.exc_info = record.exc_text = None
        return True


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("grpc._cython.cygrpc").addFilter(AnswerNotSent())
