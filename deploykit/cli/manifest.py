"""Manifest commands: ``manifest snapshot``, ``manifest diff`` and the CI gate ``check``.

Thin: resolve settings, call one function of :mod:`deploykit.manifest.check`, render with
:mod:`deploykit.output.check`, exit (0 ok, 1 stale manifest or findings at ``--fail-on``,
2 usage: bad flags, corrupt or future-schema manifest, an app that fails to import).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deploykit.cli import app
from deploykit.cli.common import (
    AppOpt,
    JsonOpt,
    RegistryOpt,
    emit_json,
    handle_errors,
    load_user_app,
    merged_flags,
)
from deploykit.config import (
    DEFAULT_MANIFEST,
    CliFlags,
    Settings,
    fail_on_level,
    ignore_entries,
    manifest_path,
    project_root,
    resolve_settings,
)
from deploykit.errors import ExitCode, UnsafeError, UsageError

if TYPE_CHECKING:
    from celery import Celery

    from deploykit.manifest.check import Report
    from deploykit.registry import ManifestRegistry

manifest_app = typer.Typer(
    help="Snapshot the app's task signatures into a manifest, diff two manifests, and keep "
    "each build's manifest in a registry (publish, list, show).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(manifest_app, name="manifest")

FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        help="text, json, github, gitlab or markdown (default: github when GITHUB_ACTIONS=true, else text).",
        show_default=False,
    ),
]
FailOnOpt = Annotated[
    str | None,
    typer.Option(
        "--fail-on",
        metavar="LEVEL",
        help="Exit 1 when an unsuppressed finding at or above this level remains: error (default), "
        "warning, info or never [pyproject: fail_on].",
        show_default=False,
    ),
]
ReportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--report",
        metavar="FORMAT=PATH",
        help="Also write the findings in FORMAT to PATH (repeatable), e.g. "
        "--report gitlab=gl-code-quality-report.json --report json=deploykit.json.",
        show_default=False,
    ),
]
ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        metavar="PATH",
        help=f"The committed manifest (default: [tool.deploykit] manifest, else {DEFAULT_MANIFEST} "
        "in the project root).",
        show_default=False,
    ),
]


# --- shared plumbing ---------------------------------------------------------------------------


def _settings(flags: CliFlags, *, need_app: bool) -> tuple[Settings, Celery | None]:
    return resolve_settings(flags, load_app=load_user_app if need_app else None, need_app=need_app)


def _format(fmt: str | None, json_: bool) -> str:
    from deploykit.output.findings import FORMATS

    if fmt is not None:
        value = fmt.strip().lower()
        if value not in FORMATS:
            raise UsageError(f"invalid --format {fmt!r}: use one of {', '.join(FORMATS)}")
        if json_ and value != "json":
            raise UsageError("--json and --format are exclusive")
        return value
    if json_:
        return "json"
    return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text"


def _reports(values: list[str] | None) -> list[tuple[str, Path]]:
    from deploykit.output.findings import FORMATS

    parsed = []
    for value in values or []:
        fmt, sep, path = value.partition("=")
        fmt = fmt.strip().lower()
        if not sep or not path or fmt not in FORMATS:
            raise UsageError(
                f"invalid --report {value!r}: expected FORMAT=PATH with FORMAT one of {', '.join(FORMATS)}"
            )
        parsed.append((fmt, Path(path)))
    return parsed


def _prefix(root: Path, fmt: str) -> str | None:
    """The project root relative to the repository root CI annotates against."""
    base = os.environ.get("GITHUB_WORKSPACE") if fmt == "github" else os.environ.get("CI_PROJECT_DIR")
    try:
        relative = os.path.relpath(root.resolve(), Path(base or Path.cwd()).resolve())
    except ValueError:
        return None
    if relative == "." or relative.startswith(".."):
        return None
    return Path(relative).as_posix()


def emit_report(
    report: Report, fmt: str, reports: list[tuple[str, Path]], *, root: Path, manifest: str
) -> None:
    """Render on stdout, write the ``--report`` files and the GitHub step summary, set the exit code."""
    from deploykit.output import check as out

    if fmt == "json":
        emit_json(report.document())
    elif fmt == "text":
        from deploykit.output.text import console

        out.render_text(report, console())
    else:
        sys.stdout.write(out.render(report, fmt, prefix=_prefix(root, fmt), fallback_path=manifest))
        sys.stdout.flush()
    for extra, path in reports:
        try:
            path.write_text(out.render(report, extra, prefix=_prefix(root, extra), fallback_path=manifest))
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if fmt == "github" and summary:
        try:
            out.write_step_summary(report, Path(summary), prefix=_prefix(root, "github"))
        except OSError as exc:
            raise UsageError(f"cannot write $GITHUB_STEP_SUMMARY: {exc.strerror or exc}") from None
    if report.failed:
        raise typer.Exit(int(ExitCode.UNSAFE))
    if report.incomplete:
        raise typer.Exit(int(ExitCode.INCOMPLETE))


def _with_broker_scan(
    report: Report,
    flags: CliFlags,
    manifest: Path,
    user_app: Celery | None,
    *,
    peek: bool,
    peek_limit: int,
    force: bool,
) -> Report:
    """``check --broker``: scan the waiting messages against the live code (``deploykit scan``,
    without the app's ``beat_schedule``, which the manifest rules judge) and add the verdicts to
    ``report`` (:func:`deploykit.manifest.check.with_waiting`)."""
    from deploykit.cli.scan import scan_broker
    from deploykit.manifest.check import with_waiting
    from deploykit.manifest.collect import collect_app

    new = collect_app(user_app, Path.cwd())
    scanned, compared = scan_broker(
        flags,
        against=None,
        old_manifest=manifest,
        queues=None,
        workers=True,
        beat=True,
        peek=peek,
        peek_limit=peek_limit,
        force=force,
        oversize=1024 * 1024,
        new_manifest=new,
        beat_schedule=False,
    )
    return with_waiting(report, scanned, new, broker=compared.broker)


# --- commands --------------------------------------------------------------------------------


@manifest_app.command("snapshot")
def snapshot(
    ctx: typer.Context,
    app_: AppOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help=f"Where to write it ('-' for stdout; default: [tool.deploykit] manifest, else "
            f"{DEFAULT_MANIFEST} in the project root).",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; exit 1 if the file is missing or stale (for pre-commit/CI)."
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Import the app (like a worker: task modules, autodiscovery, Django) and write its manifest."""
    from deploykit.manifest import model
    from deploykit.manifest.check import staleness
    from deploykit.manifest.collect import snapshot as collect
    from deploykit.userapp import load_warnings

    with handle_errors():
        flags = merged_flags(ctx, app_)
        settings, user_app = _settings(flags, need_app=True)
        path = manifest_path(settings, output)
        manifest = collect(settings.app, project_root(settings), app=user_app)
        counts = {"tasks": len(manifest.tasks), "beat": len(manifest.beat)}
        if check:
            if str(path) == "-":
                raise UsageError("--check needs a file, not '-'")
            state = staleness(path, manifest)
            problems = load_warnings(user_app)
            if json_:
                from deploykit.output.documents import snapshot_check_document

                emit_json(
                    snapshot_check_document(
                        state,
                        path=str(path),
                        load_warnings=problems,
                        tasks=len(manifest.tasks),
                        beat=len(manifest.beat),
                    )
                )
            if state.stale:
                raise UnsafeError(state.describe(load_errors=len(problems)))
            if not json_:
                typer.echo(f"{path} is up to date ({counts['tasks']} tasks, {counts['beat']} beat entries)")
            return
        text = model.dumps(manifest)
        if str(path) == "-":
            sys.stdout.write(text)
            return
        try:
            unchanged = path.exists() and path.read_text(encoding="utf-8") == text
            if not unchanged:
                path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        if json_:
            from deploykit.output.documents import snapshot_written_document

            emit_json(
                snapshot_written_document(
                    str(path), written=not unchanged, tasks=counts["tasks"], beat=counts["beat"]
                )
            )
        else:
            verb = "unchanged" if unchanged else "wrote"
            typer.echo(f"{verb} {path}: {counts['tasks']} tasks, {counts['beat']} beat entries")


@manifest_app.command("diff")
def diff(
    ctx: typer.Context,
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The manifest of the running release.")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The manifest of the release to ship.")],
    fmt: FormatOpt = None,
    json_: JsonOpt = False,
    fail_on: FailOnOpt = None,
    report_to: ReportOpt = None,
) -> None:
    """Compare two manifest files: what breaks for queued messages and during a rolling deploy."""
    from deploykit.manifest.check import diff_files

    with handle_errors():
        settings, _ = _settings(merged_flags(ctx), need_app=False)
        chosen, extra = _format(fmt, json_), _reports(report_to)
        report = diff_files(
            old, new, ignore=ignore_entries(settings), fail_on=fail_on_level(settings, fail_on)
        )
        emit_report(report, chosen, extra, root=project_root(settings), manifest=str(new))


@app.command("check")
def check(
    ctx: typer.Context,
    app_: AppOpt = None,
    manifest: ManifestOpt = None,
    fmt: FormatOpt = None,
    json_: JsonOpt = False,
    fail_on: FailOnOpt = None,
    report_to: ReportOpt = None,
    scan_broker: Annotated[
        bool,
        typer.Option(
            "--broker",
            help="Also check the messages already waiting on the broker (given with -b before the "
            "command, or configured) against the live code, as WAITING_* findings.",
        ),
    ] = False,
    peek: Annotated[
        bool, typer.Option("--peek", help="With --broker: sample RabbitMQ queues (requeues them; see scan).")
    ] = False,
    peek_limit: Annotated[
        int, typer.Option("--peek-limit", metavar="N", help="With --peek: per queue.")
    ] = 100,
    force: Annotated[bool, typer.Option("--force", help="With --peek: allow quorum queues.")] = False,
) -> None:
    """CI gate: compare the committed manifest with the live code (exit 1 on findings at --fail-on).

    With --broker, also judge every waiting message (queues, worker-held, ETA, beat) against the
    live code, like `deploykit scan`, and report what would fail, be discarded or misbind.
    """
    from deploykit.manifest.check import check_code

    with handle_errors():
        flags = merged_flags(ctx, app_)
        chosen, extra = _format(fmt, json_), _reports(report_to)
        settings, _ = _settings(flags, need_app=False)  # read pyproject before importing user code
        path = manifest_path(settings, manifest)
        level = fail_on_level(settings, fail_on)
        ignore = ignore_entries(settings)
        from deploykit.manifest import model

        model.read(path)  # a missing or corrupt manifest is reported before the app is imported
        settings, user_app = _settings(flags, need_app=True)
        report = check_code(
            path, settings.app, project_root(settings), ignore=ignore, fail_on=level, app=user_app
        )
        if scan_broker:
            report = _with_broker_scan(
                report, flags, path, user_app, peek=peek, peek_limit=peek_limit, force=force
            )
        emit_report(report, chosen, extra, root=project_root(settings), manifest=str(path))


@manifest_app.command("rules")
def rules(json_: JsonOpt = False) -> None:
    """List the rule IDs that diff and check report, with their default level and their page."""
    from deploykit.docs import rule_url
    from deploykit.manifest.rules import RULES

    with handle_errors():  # a malformed DEPLOYKIT_DOCS_URL is a usage error
        pages = {rule_id: rule_url(rule_id) for rule_id in RULES}
    if json_:
        from deploykit.output.documents import rules_document

        emit_json(rules_document(list(RULES.values()), pages))
        return
    from deploykit.output.check import render_rules

    render_rules(list(RULES.values()), pages, typer.echo)


# --- the manifest registry ---------------------------------------------------------------------


@contextlib.contextmanager
def _open_registry(
    ctx: typer.Context, directory: Path | None, *, limit: int, ttl: str | None
) -> Iterator[ManifestRegistry]:
    """The registry in ``directory``, else in the broker (-b before the command, or configured)."""
    from deploykit.brokers import open_broker
    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.cli.common import resolve, use_redactor
    from deploykit.config import parse_duration
    from deploykit.registry import ManifestRegistry

    seconds = parse_duration(ttl, what="--ttl") if ttl is not None else None
    broker = None
    if directory is None:
        settings, _ = resolve(merged_flags(ctx))
        use_redactor(settings)
        broker = open_broker(settings)
    try:
        store = open_manifest_store(broker, directory=directory, ttl=seconds)
        try:
            yield ManifestRegistry(store, limit=limit)
        finally:
            store.close()
    finally:
        if broker is not None:
            broker.close()


@manifest_app.command("publish")
def publish(
    ctx: typer.Context,
    build: Annotated[
        str | None,
        typer.Option(
            "--build",
            metavar="ID",
            envvar="DEPLOYKIT_BUILD",
            help="The build id (1-128 printable characters, no '/') [env: DEPLOYKIT_BUILD].",
            show_default=False,
        ),
    ] = None,
    app_: AppOpt = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            metavar="FILE",
            help="Publish this manifest file instead of importing the app.",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", min=1, help="Builds kept; the oldest are dropped first.")
    ] = 50,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help="Redis and RabbitMQ: keep the entry this long after its last publish (default 30d).",
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Store the manifest under a build id where every machine reaching the broker can read it."""
    from deploykit.registry import validate_build

    with handle_errors():
        if not build:
            raise UsageError("no build id: pass --build ID or set DEPLOYKIT_BUILD")
        validate_build(build)
        if from_file is not None:
            if app_ is not None:
                raise UsageError("--from and -A/--app are exclusive")
            from deploykit.manifest import model

            manifest = model.read(from_file)
        else:
            from deploykit.manifest.collect import snapshot as collect

            settings, user_app = _settings(merged_flags(ctx, app_), need_app=True)
            manifest = collect(settings.app, project_root(settings), app=user_app)
        with _open_registry(ctx, registry, limit=limit, ttl=ttl) as store:
            result = store.publish(build, manifest)
            location = store.location
        if json_:
            from deploykit.output.documents import publish_document

            emit_json(publish_document(result, registry=location, limit=limit))
            return
        from deploykit.output.registry import render_publish

        for line in render_publish(result, registry=location, limit=limit):
            typer.echo(line)


@manifest_app.command("list")
def list_builds(ctx: typer.Context, registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """List the builds in the manifest registry, newest publish first."""
    with handle_errors():
        with _open_registry(ctx, registry, limit=50, ttl=None) as store:
            entries = store.entries()
            location = store.location
        if json_:
            from deploykit.output.documents import registry_document

            emit_json(registry_document(entries, registry=location))
            return
        from deploykit.output.registry import render_entries

        for line in render_entries(entries, registry=location):
            typer.echo(line)


@manifest_app.command("show")
def show(
    ctx: typer.Context,
    build: Annotated[str, typer.Argument(metavar="ID", help="The build id.")],
    registry: RegistryOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Print the manifest of a build (the JSON `manifest snapshot` writes; --json changes nothing).

    Exit 2 when the registry has no manifest for the build, or its entry is corrupt or newer than
    this deploykit reads.
    """
    from deploykit.manifest import model
    from deploykit.output.registry import shown_build

    del json_  # the manifest is JSON already
    with handle_errors():
        with _open_registry(ctx, registry, limit=50, ttl=None) as store:
            manifest = store.get(build)
            location = store.location
        if manifest is None:
            raise UsageError(
                f"no manifest for build {shown_build(build)} in {location} "
                "(deploykit manifest list shows the builds it has)"
            )
        sys.stdout.write(model.dumps(manifest))
