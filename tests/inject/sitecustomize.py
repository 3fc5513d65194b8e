"""Test-only fault injection for data-parallel runs (tests/test_scale_out.py), found through
PYTHONPATH by every Python process a launcher starts. In the rank named by
MCH_TEST_PAUSE_RANK, once it has written MCH_TEST_PAUSE_AFTER store chunks, the process
writes its pid to MCH_TEST_PAUSE_FILE and stops there until the test SIGKILLs it: a rank
killed mid-run, at a point the test knows."""

import os

if os.environ.get("MCH_TEST_PAUSE_RANK") is not None and os.environ.get("RANK") == os.environ["MCH_TEST_PAUSE_RANK"]:
    import time

    import mch.store as _store

    _write = _store.Entry.write_chunk
    _count = [0]

    def _write_then_pause(self, *args, **kwargs):
        _write(self, *args, **kwargs)
        _count[0] += 1
        if _count[0] == int(os.environ.get("MCH_TEST_PAUSE_AFTER", "1")):
            marker = os.environ["MCH_TEST_PAUSE_FILE"]
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)
            while True:
                time.sleep(1)

    _store.Entry.write_chunk = _write_then_pause
