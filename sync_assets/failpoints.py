"""Named points where a test can stop the process: to kill it for real, or to hold it there.

Inert unless `SYNC_ASSETS_FAILPOINT` names the point reached. Then the process writes the point's
name and its process id (`linking.after_lookups 4242`) to the file `SYNC_ASSETS_FAILPOINT_MARKER`
and waits for as long as that file exists:

- a crash test sends SIGKILL while it waits, with whatever transaction, lock or Dagster run it
  has open still open, as a power cut would leave them;
- an overlap test lets another process run into it, then deletes the file to let it go on;
- a test of a process it did not start (a run worker the daemon launched) kills it by its id.

A monkeypatch could not show what a real process leaves behind; this does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAILPOINT = "SYNC_ASSETS_FAILPOINT"
MARKER = "SYNC_ASSETS_FAILPOINT_MARKER"
POINTS = (
    "linking.after_lookups",  # memberships fetched from the API, nothing written
    "activity_progress.before_course_commit",  # a course's writes sent, not committed
    "activity_progress.after_course_commit",  # the first course committed, the rest not
    "sync.before_certificates",  # the sync run done, its certificate work not started
    "certificates.before_commit",  # C1/C3 effects sent, not committed
    "certificates.c2_before_commit",  # certificate numbers given, not committed
)


_passed: set[str] = set()


def reached(point: str) -> None:
    """Stop here the first time the process reaches `point`, if it is the one named."""
    if os.environ.get(FAILPOINT) != point or point in _passed:
        return
    _passed.add(point)
    marker = Path(os.environ.get(MARKER) or "")
    if not marker.name:
        raise RuntimeError(f"{FAILPOINT} is set without {MARKER}")
    marker.write_text(f"{point} {os.getpid()}")
    while marker.exists():  # until killed, or let go
        time.sleep(0.05)
