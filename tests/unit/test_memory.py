"""kwire/base/memory.py: big transient buffers from worker threads go back to the system (the node-password
scrypt left the API server ~50 MB larger for good before the mmap threshold was pinned)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import hashlib, sys, threading
from kwire.base import memory
if sys.argv[1] == "pinned":
    assert memory.pin_mmap_threshold()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
start = rss()
def work():
    for _ in range(3):
        hashlib.scrypt(b"pw", salt=b"s" * 16, n=2**14, r=8, p=1, dklen=32)
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss() - start)
"""


def _growth(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.strip())


def test_scrypt_in_threads_leaves_no_memory_behind_once_the_threshold_is_pinned() -> None:
    assert _growth("pinned") < 16  # one scrypt's 16 MB would show if a single one stayed
    assert _growth("default") > 16  # what the pin is for: glibc's dynamic threshold keeps them in thread arenas


def test_one_malloc_arena_can_be_asked_for() -> None:
    probe = "from kwire.base import memory; print(memory.one_arena())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
