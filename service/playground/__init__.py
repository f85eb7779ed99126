"""The browser playground's static files (plain HTML, CSS and JavaScript modules, no build step).

They ship inside the package (pyproject's package data), so a wheel serves the same page as a
checkout; service/api/playground.py routes them.
"""

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
