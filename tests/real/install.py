"""Create (or reuse) one venv per release of the corpus and put deploykit beside the app.

    python tests/real/install.py [APP_OR_RELEASE ...]

Layout under .cache/real/<app>-<version>/ (gitignored, reused while present):
  .app-installed      the app was installed (pip, cache on)
  app-freeze.txt      `pip freeze` right after installing the app: what the app pinned
  beside-report.json  `pip install --dry-run --report` of deploykit into that environment:
                      what pip would install or change (the install-beside check reads it)
  beside-error.txt    pip's error when deploykit cannot be resolved beside the app
  .deploykit-<hash>   deploykit installed (editable, from this checkout) for this pyproject.toml

deploykit is then installed with the app's freeze as constraints, so every test runs on the
app's own pins even while the install-beside check fails; that check judges pip's unconstrained
dry run, which is what `pip install deploykit` would do to a user's environment.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from tests.real.corpus import (
    APPS,
    CACHE,
    ROOT,
    Release,
    all_releases,
    deploykit_fingerprint,
)

BASE_PYTHON = os.environ.get("DEPLOYKIT_REAL_PYTHON", "python3.11")


def _run(cmd: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as out:
        out.write(proc.stdout[-20000:])
        out.write(proc.stderr[-20000:])
    return proc


# System libraries that a release's dependencies compile against (no wheel on PyPI):
# Mayan EDMS needs python-ldap, built from source.
SYSTEM_HEADERS = {"mayan-edms": ("/usr/include/lber.h", "libldap2-dev libsasl2-dev")}


def install(release: Release) -> None:
    """Install one release (under a lock: pytest-xdist workers may ask at the same time)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{release.key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install(release)


def _install(release: Release) -> None:
    venv = release.venv
    log = venv.parent / f"{release.key}.log"
    header, packages = SYSTEM_HEADERS.get(release.app, (None, ""))
    if header and not Path(header).exists() and not (venv / ".app-installed").exists():
        raise SystemExit(f"{release.key}: needs the system packages {packages} (apt-get install)")
    pip = [str(release.python), "-m", "pip", "--disable-pip-version-check"]
    requirements = APPS[release.app].requirements(release.version)
    installed = venv / ".app-installed"
    wanted = "".join(line + "\n" for line in requirements)
    if not installed.exists() or installed.read_text() != wanted:
        if not release.python.exists():
            proc = _run([BASE_PYTHON, "-m", "venv", str(venv)], log)
            if proc.returncode:
                raise SystemExit(f"{release.key}: venv failed, see {log}")
        proc = _run([*pip, "install", "-q", *requirements], log)
        if proc.returncode:
            raise SystemExit(f"{release.key}: pip install failed, see {log}")
        freeze = _run([*pip, "freeze", "--all"], log)
        (venv / "app-freeze.txt").write_text(freeze.stdout)
        installed.write_text(wanted)
        for marker in venv.glob(".deploykit-*"):  # the app's pins moved: check beside them again
            marker.unlink()
    marker = venv / f".deploykit-{deploykit_fingerprint()}"
    if marker.exists():
        return
    for old in venv.glob(".deploykit-*"):
        old.unlink()
    report = venv / "beside-report.json"
    error = venv / "beside-error.txt"
    for stale in (report, error):
        stale.unlink(missing_ok=True)
    # What `pip install deploykit` would do to the app's environment, unconstrained.
    proc = _run(
        [*pip, "install", "-q", "--dry-run", "--report", str(report), str(ROOT)],
        log,
    )
    if proc.returncode:
        report.unlink(missing_ok=True)
        error.write_text(proc.stdout + proc.stderr)
    # The copy the tests run: editable, on the app's own pins.
    constraints = venv / "app-constraints.txt"
    constraints.write_text(
        "".join(
            line + "\n"
            for line in (venv / "app-freeze.txt").read_text().splitlines()
            if "==" in line and not line.startswith(("-e", "pip==", "setuptools==", "wheel=="))
        )
    )
    proc = _run([*pip, "install", "-q", "-c", str(constraints), "-e", str(ROOT)], log)
    if proc.returncode:
        # deploykit's declared ranges exclude a pin of the app: the install-beside check reports
        # it; install deploykit without its resolver so the other checks still run on the pins.
        _run([*pip, "uninstall", "-y", "deploykit"], log)
        proc = _run([*pip, "install", "-q", "--no-deps", "-e", str(ROOT)], log)
        if proc.returncode:
            raise SystemExit(f"{release.key}: installing deploykit failed, see {log}")
        for requirement in ("typer", "httpx", "rich", "msgspec", "celery", "kombu"):
            _run([*pip, "install", "-q", "-c", str(constraints), requirement], log)
        (venv / "deploykit-no-deps.txt").write_text(proc.stdout + proc.stderr)
    else:
        (venv / "deploykit-no-deps.txt").unlink(missing_ok=True)
    marker.write_text(deploykit_fingerprint())


def main(argv: list[str]) -> int:
    selected = all_releases()
    if argv:
        unknown = set(argv) - set(APPS) - {r.key for r in selected}
        if unknown:
            raise SystemExit(f"unknown: {sorted(unknown)}; apps: {sorted(APPS)}")
        selected = [r for r in selected if r.app in argv or r.key in argv]
    failures = []
    for release in selected:
        print(f"== {release.key}", flush=True)
        try:
            install(release)
        except SystemExit as exc:
            failures.append(str(exc))
            print(exc, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
