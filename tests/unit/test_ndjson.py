"""kwire/base/ndjson.py: newline-delimited JSON as a watch or etcd stream delivers it, in chunks that split lines
anywhere, with blank lines skipped and the partial-line buffer bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kwire.base.ndjson import json_lines


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def _all(*parts: bytes, max_line: int = 1024) -> list[object]:
    return [v async for v in json_lines(_chunks(*parts), max_line=max_line)]


async def test_lines_split_across_chunks_and_several_in_one_chunk() -> None:
    got = await _all(b'{"type":"ADD', b'ED","n":1}\n{"n":2}\n\n  \n{"n"', b":3}\n")
    assert got == [{"type": "ADDED", "n": 1}, {"n": 2}, {"n": 3}]


async def test_an_unterminated_last_line_is_not_a_value() -> None:
    assert await _all(b'{"n":1}\n{"n":2}') == [{"n": 1}]


async def test_a_line_that_never_ends_is_refused_once_over_the_bound() -> None:
    with pytest.raises(ValueError, match="over 64 bytes"):
        await _all(b'{"n":1}\n', b"x" * 40, b"x" * 40, max_line=64)


async def test_a_line_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        await _all(b"not json\n")
