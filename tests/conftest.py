"""Shared by every test directory; keep it tiny (area fixtures live in each directory's conftest)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
