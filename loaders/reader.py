"""Untrusted files are read in a child process with a memory ceiling, so a decompression bomb (a PDF stream,
an Office or EPUB zip that inflates to gigabytes) or a page too big to parse ends the child, never the app;
the source gets a one-line reason and the next one is read by a fresh child.

    reply = READER.run({"path": "...", "name": "x.pdf", "kind": "pdf", "suffix": ".pdf", "jq": None})
    # {"docs": [[text, metadata], ...]} or {"error": "one-line reason"}; ReaderDied if the child ended
    # (the child's progress lines, {"progress": [fraction, message]}, go to `progress` on the way)

One child serves one read at a time and stays up between reads (start-up ~0.5 s, paid once). It runs
loaders.documents.read_file; its replies are JSON lines, so nothing a hostile file steers is unpickled here.

CHATAPP_READ_MEMORY_MB (default 3072) caps the child's address space; 0 reads in this process, unguarded.
The child's tesseract runs single-threaded (OMP_THREAD_LIMIT=1): its OpenMP threads made a page 9x slower
on a 2-core machine with other work on it (18 s against 2 s), and single-threaded is what tesseract's own
docs advise when other work shares the cores.
"""
from __future__ import annotations

import atexit
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

DEFAULT_MEMORY_MB = 3072
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def memory_mb() -> int:
    return int(os.environ.get("CHATAPP_READ_MEMORY_MB", DEFAULT_MEMORY_MB))


class ReaderDied(Exception):
    """The child ended in the middle of a read: it ran out of memory (or was killed)."""


class Reader:
    def __init__(self):
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._limit = 0

    def _spawn(self, limit_mb: int) -> subprocess.Popen:
        path = os.pathsep.join(p for p in [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")] if p)
        env = {**os.environ, "OMP_THREAD_LIMIT": "1", "PYTHONPATH": path}
        return subprocess.Popen([sys.executable, "-m", "loaders.reader", str(limit_mb)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)

    def run(self, request: dict, progress: Callable[[float, str], None] | None = None) -> dict:
        """The child's reply to `request`; its progress lines go to `progress` on the way."""
        limit = memory_mb()
        with self._lock:
            if self._child is None or self._child.poll() is not None or self._limit != limit:
                self._stop()
                self._child, self._limit = self._spawn(limit), limit
            child = self._child
            try:
                child.stdin.write(json.dumps(request).encode() + b"\n")
                child.stdin.flush()
                docs: list = []
                while True:
                    line = child.stdout.readline()
                    reply = json.loads(line) if line else None
                    if reply is None:
                        break
                    if "doc" in reply:
                        docs.append(reply["doc"])
                    elif "progress" in reply:
                        if progress:
                            progress(*reply["progress"])
                    else:
                        if reply.get("done"):
                            reply = {"docs": docs}
                        break
            except (BrokenPipeError, OSError):
                reply = None
            if reply is None:
                self._child = None
                raise ReaderDied(child.wait())
            return reply

    def _stop(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            try:
                child.stdin.close()  # the child's loop ends at end of input
                child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()

    def close(self) -> None:
        with self._lock:
            self._stop()


READER = Reader()
atexit.register(READER.close)


def main() -> None:
    """The child: one JSON request a line on stdin; on the original stdout, progress lines, a line per Document,
    then {"done": true}, or one line of error."""
    limit = int(sys.argv[1]) * 2**20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError) as err:  # a system that cannot cap it (macOS): read anyway, and say so
        print(f"loaders.reader: no memory ceiling on this system ({err})", file=sys.stderr)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's stray print goes to stderr, not into the replies
    from loaders.documents import LoadError, read_file

    def send(reply: str) -> None:
        replies.write(reply.encode() + b"\n")
        replies.flush()

    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            docs = read_file(Path(request.pop("path")), **request,
                             progress=lambda fraction, message: send(json.dumps({"progress": [fraction, message]})))
            for doc in docs:  # a line each: neither side ever holds one string of all the text
                send(json.dumps({"doc": [doc.page_content, doc.metadata]}))
            reply = json.dumps({"done": True})
        except LoadError as err:
            reply = json.dumps({"error": err.reason})
        except MemoryError:
            reply = json.dumps({"memory": True})
        send(reply)


if __name__ == "__main__":
    main()
