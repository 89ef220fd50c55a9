"""Where a task's source is, as a path a person (and a CI annotation) can use.

* Inside the project (the checkout deploykit runs in): relative to its root, ``proj/billing/tasks.py``.
* Installed (``site-packages``, the usual case in an image built from a wheel, or any ``sys.path``
  entry outside the project): relative to the import root that holds it, which is the package's
  own path (``proj/billing/tasks.py``), so the manifest says where the code is instead of nothing.
* Mapped back to the checkout when the same file is there (``proj/…`` or ``src/proj/…`` under the
  project root, with identical content): GitHub annotations then land on the repository's file, and
  the line numbers are the checkout's. A checkout whose copy differs keeps the package path: its
  line numbers would point at other code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

#: Where a package's source lives in a checkout, relative to the project root: flat or ``src/`` layout.
CHECKOUT_LAYOUTS = ("", "src")


class SourcePaths:
    """Source files as manifest locations (POSIX paths), resolved once per file."""

    def __init__(self, root: Path, import_roots: Sequence[str] | None = None) -> None:
        self.root = root.resolve()
        self._import_roots = list(sys.path if import_roots is None else import_roots)
        self._roots: list[Path] | None = None
        self._cache: dict[str, str | None] = {}

    def relative(self, filename: str) -> str | None:
        """The location of ``filename``; ``None`` for code with no file (``<string>``, builtins)."""
        if filename not in self._cache:
            self._cache[filename] = self._locate(filename)
        return self._cache[filename]

    def _locate(self, filename: str) -> str | None:
        if not filename or filename.startswith("<"):
            return None
        try:
            path = Path(filename).resolve()
        except (OSError, RuntimeError):
            return None
        if path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        package = self._package_path(path)
        if package is None:
            return None
        return self._in_checkout(package, path) or package

    def _package_path(self, path: Path) -> str | None:
        """``path`` relative to the deepest import root holding it (``site-packages``, ``lib/``…)."""
        if self._roots is None:
            roots = set()
            for entry in self._import_roots:
                try:
                    resolved = Path(entry or ".").resolve()
                except (OSError, RuntimeError):
                    continue
                if resolved != self.root and resolved.is_dir():
                    roots.add(resolved)
            self._roots = sorted(roots, key=lambda p: len(p.parts), reverse=True)
        for root in self._roots:
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return None

    def _in_checkout(self, package: str, installed: Path) -> str | None:
        """The checkout's copy of an installed file, when it is the same file."""
        try:
            content = installed.read_bytes()
        except OSError:
            return None
        for layout in CHECKOUT_LAYOUTS:
            candidate = self.root / layout / package
            try:
                if candidate.is_file() and candidate.read_bytes() == content:
                    return candidate.relative_to(self.root).as_posix()
            except OSError:
                continue
        return None
