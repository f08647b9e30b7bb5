"""Golden files for whole nft transactions (tests/unit/data/nft/*.nft).

A test renders a transaction and compares it, whole, with its golden file. `KWIRE_UPDATE_GOLDEN=1` rewrites the
files from the code (then review the diff: the golden file is the reviewed statement of what the kernel is given);
a missing golden file is a failure, never silently created.
"""

from __future__ import annotations

import os
from pathlib import Path

from kwire.kernel import nft

DATA = Path(__file__).parent / "data" / "nft"


def check(name: str, txn: nft.Transaction | str) -> None:
    text = txn if isinstance(txn, str) else txn.render()
    path = DATA / f"{name}.nft"
    if os.environ.get("KWIRE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with KWIRE_UPDATE_GOLDEN=1 and review it"
    want = path.read_text()
    assert text == want, f"transaction differs from {path.name}:\n{text}"
