"""Crash-safe ingestion: a real ingest process killed with SIGKILL at three moments leaves no source
listed with fewer chunks than a clean ingest gives it, and the next ingest finishes where it stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loaders import load, split

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "ingest_until.py"
PDF = "attention-is-all-you-need.pdf"


@pytest.fixture(scope="module")
def sources(corpus, tmp_path_factory) -> list[Path]:
    """Two text files of 300+ chunks (more than one write batch of 256), the paper, a page."""
    folder = tmp_path_factory.mktemp("crash-sources")
    pages = [d.page_content for d in load(corpus / "pdf" / PDF)]
    for name, repeat in (("big-a.txt", 6), ("big-b.txt", 7)):
        (folder / name).write_text("\n\n".join(f"Part {n} of {name}. {page}" for n in range(repeat) for page in pages))
    return [folder / "big-a.txt", corpus / "pdf" / PDF, folder / "big-b.txt", corpus / "html" / "bbc-1.html"]


def helper(data: Path, engine: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), "--data", str(data), "--engine", engine, *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def killed_at(data: Path, engine: str, sources: list[Path], stop: str | None = None, after_s: float | None = None) -> list[str]:
    """Run an ingest and SIGKILL it at the progress message holding `stop`, or `after_s` seconds after
    its first message. Returns what it printed."""
    process = helper(data, engine, *([] if stop is None else ["--stop", stop]), *map(str, sources))
    lines, started = [], None
    try:
        for line in process.stdout:
            lines.append(line.rstrip())
            if started is None and line.startswith("reading"):
                started = time.monotonic()
            if line.startswith("STOPPED") or (after_s is not None and started and time.monotonic() - started > after_s):
                break
        assert process.poll() is None, "\n".join(lines)  # still mid-ingest when killed
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    return lines


def listing(data: Path, engine: str) -> tuple[dict[str, int], dict[str, int]]:
    if engine == "edge":  # the real CLI, as a user would check
        done = subprocess.run([sys.executable, "-m", "loaders", "list", "--json"], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "CHATAPP_DATA_DIR": str(data)}, timeout=300)
        assert done.returncode == 0, done.stderr
        listed = {e["source"]: e["chunks"] for e in json.loads(done.stdout)}
        interrupted = {}
        for line in done.stderr.splitlines():
            if line.startswith("not listed, an ingest was interrupted:"):
                interrupted = {name.strip(): 0 for name in line.split(":", 1)[1].split("(")[0].split(",")}
        return listed, interrupted
    process = helper(data, engine, "--list")
    out, _ = process.communicate(timeout=300)
    found = json.loads(out.strip().splitlines()[-1])
    return {e["source"]: e["chunks"] for e in found["listed"]}, found["interrupted"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["edge", "server"])
def test_kill_9_mid_ingest_leaves_no_half_source_and_the_next_ingest_continues(engine, sources, tmp_path):
    clean = {path.name: len(split(load(path))) for path in sources}
    assert clean["big-a.txt"] > 256 and clean["big-b.txt"] > 256
    data = tmp_path / "data"

    def no_half_source() -> tuple[dict, dict]:
        listed, interrupted = listing(data, engine)
        assert all(listed[name] == clean[name] for name in listed), (listed, clean)
        assert not set(listed) & set(interrupted)
        return listed, interrupted

    # 1: inside the first source, after its first batch of 256 chunks is written
    killed_at(data, engine, sources, stop="embedding big-a.txt: 256/")
    listed, interrupted = no_half_source()
    assert listed == {} and set(interrupted) == {"big-a.txt"}

    # 2: the next ingest says it continues, keeps the 256 chunks, and is killed inside the third source
    lines = killed_at(data, engine, sources, stop="embedding big-b.txt: 256/")
    assert 'unfinished: {"big-a.txt": 256}' in lines
    assert any(line.startswith("ok     big-a.txt:") and "resumed: 256" in line for line in lines), lines
    listed, interrupted = no_half_source()
    assert set(listed) == {"big-a.txt", PDF} and set(interrupted) == {"big-b.txt"}

    # 3: at a moment chosen by time, wherever the ingest then is
    killed_at(data, engine, sources[::-1], after_s=2.0)
    no_half_source()

    # then an ingest to the end: everything stored once, in full
    process = helper(data, engine, *map(str, sources))
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    listed, interrupted = no_half_source()
    assert listed == clean and interrupted == {}
