#!/usr/bin/env python3
"""The disk's raw sync rate, for the benchmarks to state beside their figures.

    scripts/disk_probe.py DIR [SECONDS]

Overwrites one 4 KiB block of a file in DIR and fdatasyncs it, again and
again for SECONDS (default 3), then removes the file. Prints one line:
"<syncs per second> <mean microseconds per sync>".
"""
import os
import sys
import tempfile
import time


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    secs = float(sys.argv[2]) if len(sys.argv) == 3 else 3.0
    fd, path = tempfile.mkstemp(prefix=".disk-probe-", dir=sys.argv[1])
    try:
        block, n = b"\x5a" * 4096, 0
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        start = time.monotonic()
        while time.monotonic() - start < secs:
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            n += 1
        took = time.monotonic() - start
    finally:
        os.close(fd)
        os.unlink(path)
    print(f"{n / took:.0f} {took / max(n, 1) * 1e6:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
