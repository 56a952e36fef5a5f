"""Demo material: the bundled Themis stores and a writer producing live runs in Themis' format."""

from __future__ import annotations

import os
from typing import List

_HERE = os.path.dirname(os.path.abspath(__file__))
STORE_NAMES = ("themis-v1-gzip", "themis-v1")


def bundled_stores() -> List[str]:
    """Roots of the bundled real Themis 1.4.0 stores (package data, or the source checkout)."""
    for base in (os.path.join(_HERE, "stores"), os.path.join(os.path.dirname(os.path.dirname(_HERE)), "tests", "data")):
        found = [os.path.join(base, n) for n in STORE_NAMES if os.path.isdir(os.path.join(base, n, "experiments"))]
        if found:
            return found
    raise FileNotFoundError("bundled demo stores not found; reinstall themis-daemon")


def bundled_v4_sqlite() -> str:
    """The bundled Themis 4.0.2 SQLite store (runs written by the real themis-eval 4.0.2)."""
    for base in (os.path.join(_HERE, "stores"), os.path.join(os.path.dirname(os.path.dirname(_HERE)), "tests", "data")):
        path = os.path.join(base, "themis-v4", "sqlite", "themis.sqlite3")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("bundled Themis 4 demo store not found; reinstall themis-daemon")
