"""Ingests that run in the background: a drop in the Documents tab starts one and returns at once.

Why not a Gradio event that runs the whole ingest: an event that runs for minutes holds the upload box, and
Gradio ignores (default trigger mode) or races (trigger_mode="multiple") a second drop made meanwhile, which
then was never stored. Here each drop starts its own job at once; the store lets one source be written at a
time while the next is read, marks what each job is storing (so a question asked meanwhile waits for it), and
the page polls `IngestJobs` for progress. A job outlives the page that started it: a reload shows it running.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from loaders.documents import source_key

KEEP = 50  # finished jobs remembered (for pages that show them); older ones are dropped


@dataclass
class IngestJob:
    id: int
    names: list[str]                                   # what was dropped, as shown while it runs
    lines: list[str] = field(default_factory=list)     # refused-at-the-door lines, then one per source
    progress: str = ""                                 # the store's latest progress message
    fraction: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def text(self) -> str:
        if not self.done.is_set():
            head = f"Storing {', '.join(self.names)}: {self.fraction:.0%}"
            return "\n".join([*self.lines, head + (f" ({self.progress})" if self.progress else "")])
        return "\n".join(self.lines)


class IngestJobs:
    """The store's background ingests. `version` changes with every progress message and every finish, so a
    page redraws only when something changed; `finished` changes only when a job ends (the list of sources
    is worth re-reading then)."""

    def __init__(self, store):
        self.store = store
        self._ids = itertools.count(1)
        self._jobs: dict[int, IngestJob] = {}
        self._lock = threading.Lock()
        self.version = 0
        self.finished = 0

    def start(self, paths: list[str], jq: str | None = None, refused: list[str] | None = None) -> IngestJob:
        """Start storing `paths` on a thread of its own; `refused` lines (too big, not a URL) head its log."""
        names = [source_key(p) for p in paths] or ["nothing"]  # as the store will name them
        job = IngestJob(next(self._ids), names, lines=list(refused or []))
        with self._lock:
            self._jobs[job.id] = job
            for old in sorted(self._jobs)[:-KEEP]:
                if self._jobs[old].done.is_set():
                    del self._jobs[old]
            self.version += 1
        # Marked before this returns, so a question asked right after the drop waits for these sources.
        started = threading.Event()
        threading.Thread(target=self._run, args=(job, paths, jq, started), name=f"ingest-{job.id}",
                         daemon=True).start()
        started.wait()
        return job

    def _run(self, job: IngestJob, paths: list[str], jq: str | None, started: threading.Event) -> None:
        try:
            results = self.store.ingest(paths, progress=lambda fraction, message: self._report(job, fraction, message),
                                        jq=jq, started=started.set) if paths else []
            job.lines += [r.summary() for r in results]
            ok = sum(r.ok for r in results)
            job.lines.append(f"{ok} of {len(job.lines)} sources stored, {sum(r.added for r in results)} new chunks")
        except Exception as err:  # the store itself failed (closed, disk full): one line, never a silent stop
            job.lines.append(f"FAILED {', '.join(job.names)}: {type(err).__name__}: {' '.join(str(err).split())}")
        finally:
            started.set()
            with self._lock:
                job.done.set()
                self.version += 1
                self.finished += 1

    def _report(self, job: IngestJob, fraction: float, message: str) -> None:
        with self._lock:
            job.fraction, job.progress = fraction, message
            self.version += 1

    def running(self) -> list[int]:
        with self._lock:
            return [i for i, job in self._jobs.items() if not job.done.is_set()]

    def text(self, ids: list[int]) -> str:
        """The log of these jobs (those still remembered), oldest first, a blank line between."""
        with self._lock:
            return "\n\n".join(self._jobs[i].text() for i in ids if i in self._jobs)
