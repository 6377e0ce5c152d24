"""Shared test setup: make the dependency-free scripts in tools/ importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

pytest_plugins = ["pytester"]
