"""Seeds of the generators: one integer from any parts, the same on every machine."""

from __future__ import annotations

import hashlib
from typing import Any


def hash_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")
