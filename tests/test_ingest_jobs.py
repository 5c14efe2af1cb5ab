"""Background ingests (loaders.jobs) on the real store: each drop starts its own job at once, the chat can see
what is still being stored, and every job ends with the log lines the CLI prints."""
from __future__ import annotations

import re
import time

from chatapp.settings import Settings
from loaders.jobs import IngestJobs
from loaders.store import get_store


def wait_for(condition, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_two_jobs_started_together_are_both_stored_and_named_while_they_run(tmp_path):
    store = get_store(Settings.from_env(data_dir=tmp_path / "data"))
    try:
        long = tmp_path / "gannet-counts.txt"
        long.write_text(" ".join(f"Count {n}: the survey saw {n} gannets on the west cliff." for n in range(6_000)))
        short = tmp_path / "puffin-note.txt"
        short.write_text("Puffins come back to Skomer in April and leave in August.")
        jobs = IngestJobs(store)
        first = jobs.start([str(long)])
        assert "gannet-counts.txt" in store.ingesting()  # marked before start() returns: a question waits for it
        assert wait_for(lambda: "embedding gannet-counts.txt" in first.progress)
        second = jobs.start([str(short)], refused=["FAILED huge.pdf: 300.0 MB is over the 200 MB upload limit"])
        assert second.text().startswith("FAILED huge.pdf") and "Storing puffin-note.txt" in second.text()
        # read at once, then written after the first: the log says why it sits at 0%
        assert wait_for(lambda: "waiting: another source is being written" in second.progress)
        assert not first.done.is_set() and "puffin-note.txt" in store.ingesting()
        assert first.done.wait(300) and second.done.wait(300)
        assert re.fullmatch(r"ok     gannet-counts.txt: (\d+) chunks\n1 of 1 sources stored, \1 new chunks", first.text())
        assert second.text() == ("FAILED huge.pdf: 300.0 MB is over the 200 MB upload limit\n"
                                 "ok     puffin-note.txt: 1 chunks\n1 of 2 sources stored, 1 new chunks")
        assert {e["source"] for e in store.list_sources()} == {"gannet-counts.txt", "puffin-note.txt"}
        assert not store.ingesting() and jobs.running() == []
        assert jobs.text([first.id, second.id]) == first.text() + "\n\n" + second.text()
    finally:
        store.close()


def test_a_job_whose_store_fails_ends_with_one_line(tmp_path):
    store = get_store(Settings.from_env(data_dir=tmp_path / "data"))
    note = tmp_path / "note.txt"
    note.write_text("Terns fly far.")
    store.close()  # a closed store raises on write: the job says so and ends
    job = IngestJobs(store).start([str(note)])
    assert job.done.wait(60)
    assert job.text().startswith("FAILED note.txt: "), job.text()
