"""The README's first example, run as written: the first ```python block of
bindings/python/README.md, in a fresh interpreter, twice (it must not depend
on what an earlier run left behind)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def first_python_block(markdown: str) -> str:
    """The body of the first ```python fenced block."""
    match = re.search(r"^```python\n(.*?)^```", markdown, re.S | re.M)
    assert match is not None, f"{README} has no ```python block"
    return match.group(1)


def test_the_readme_example_runs_as_written_and_again(tmp_path: Path) -> None:
    code = first_python_block(README.read_text())
    # The example's tempfile.mkdtemp() dirs land under tmp_path (cleaned up).
    env = dict(os.environ, TMPDIR=str(tmp_path))
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"run {run} failed:\n{done.stdout}\n{done.stderr}"
        assert done.stdout == "previous value: b''\n", f"run {run}: {done.stdout!r}"
        assert done.stderr == "", f"run {run} printed on stderr: {done.stderr!r}"
