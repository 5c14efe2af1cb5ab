"""What the benchmarks print about the CPU beside their numbers."""
from __future__ import annotations

from pathlib import Path

MATRIX_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def matrix_units() -> list[str]:
    """The CPU's int8/bf16 matrix instructions. They decide what the int8 embedder and a bf16 model gain:
    with AMX, ONNX Runtime's int8 embedder ran 4.2x sentence-transformers' fp32 (2.6x on a machine of an
    earlier session), and bf16 matmuls several times fp32's (bench/chat.py prints both rates)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    present = set(flags.split(":", 1)[-1].split())
    return [flag for flag in MATRIX_FLAGS if flag in present]
