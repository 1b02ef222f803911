"""The original implementation's backup loop, for comparison: SQLite's Online
Backup API stepped N pages at a time with no read transaction held across the
steps. A commit from another process between two steps makes SQLite start the
copy again from page 1; this loop counts those restarts.

    python -m bench.stepped_backup --src DB --dst OUT --pages 100 --cap 60

Prints one JSON object: done, steps, restarts, pages reached, page count.
"""

from __future__ import annotations

import argparse
import json
import time

import apsw

BUSY_PAUSE = 0.005


def copy_in_steps(src_path: str, dst_path: str, pages: int, cap: float) -> dict[str, object]:
    deadline = time.monotonic() + cap
    src = apsw.Connection(src_path, flags=apsw.SQLITE_OPEN_READONLY)
    src.setbusytimeout(5000)
    dst = apsw.Connection(dst_path)
    steps = restarts = busy = copied_before = furthest = 0
    done = False
    try:
        with dst.backup("main", src, "main") as backup:
            while not done and time.monotonic() < deadline:
                try:
                    done = backup.step(pages)
                except (apsw.BusyError, apsw.LockedError):
                    busy += 1
                    time.sleep(BUSY_PAUSE)
                    continue
                steps += 1
                # page_count - remaining is the next page to copy, minus one:
                # it grows by `pages` per step unless the copy went back to page 1.
                copied = backup.page_count - backup.remaining
                if not done and steps > 1 and copied < copied_before + pages:
                    restarts += 1
                copied_before = copied
                furthest = max(furthest, copied)
            page_count = backup.page_count
    finally:
        dst.close()
        src.close()
    return {
        "done": done,
        "steps": steps,
        "restarts": restarts,
        "busy_retries": busy,
        "furthest_page": page_count if done else furthest,
        "page_count": page_count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--cap", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args()
    result = copy_in_steps(args.src, args.dst, args.pages, args.cap)
    print(json.dumps(result))
    return 0 if result["done"] else 3


if __name__ == "__main__":
    raise SystemExit(main())
