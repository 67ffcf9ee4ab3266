"""``c3-render``: the command line over ``c3render.Client``.

Exit codes: 0 success; 1 the job failed (or was cancelled / timed out / not final in time), or
the API answered an error; 2 a usage error, including the server refusing the request itself
(400, 413, 415, 422: the field and rule are printed). Results go to stdout, everything else
(progress, messages, errors) to stderr; ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import inspect
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from . import __version__
from .client import DEFAULT_URL, Client
from .errors import C3RenderError, ConnectionFailed, InvalidRequest, Unauthorized
from .models import Batch, BatchSubmitted, Job, JobType

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
LIVE_POLL = 2  # seconds per long poll under the live display: a held answer still shows progress

GLOBAL_VALUE_OPTIONS = ("--url", "--api-key")


def hoist_global_options(args: list[str], commands: set[str]) -> list[str]:
    """``--url``/``--api-key`` are the command line's own options and ``--json`` each
    command's: accept all three before or after the subcommand, by moving ``--url`` and
    ``--api-key`` (with their values) to the front and a ``--json`` given before the
    subcommand to just after it."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 2
            continue
        if any(arg.startswith(option + "=") for option in GLOBAL_VALUE_OPTIONS):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    command_at = next((n for n, arg in enumerate(rest) if arg in commands), None)
    if command_at is not None and "--json" in rest[:command_at]:
        before = [arg for arg in rest[:command_at] if arg != "--json"]
        rest = [*before, rest[command_at], "--json", *rest[command_at + 1:]]
    return front + rest


class AnywhereOptions(typer.core.TyperGroup):
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args), set(self.commands)))


app = typer.Typer(cls=AnywhereOptions, help="Submit and follow c3-render jobs (text to speech, speech to text, talking "
                       "portraits, image analysis).", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
stderr = Console(stderr=True)
stdout = Console(soft_wrap=True)


@dataclass
class Connection:
    url: Optional[str]
    api_key: Optional[str]

    def client(self) -> Client:
        return Client(self.url, self.api_key)

    def where(self) -> str:
        """The API's URL and what set it, for messages."""
        if self.url:
            return f"{self.url} (from --url or C3_RENDER_URL)"
        return f"{DEFAULT_URL} (the default: set C3_RENDER_URL or --url to another)"



# -- options shared by several commands ----------------------------------------------------
JsonOut = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON document.")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the job until it is final (live display).")]
Output = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Write the result to this file (or directory); implies --wait.")]
Timeout = Annotated[float, typer.Option(help="With --wait: give up after this many seconds (exit 1).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"c3-render {__version__}")
        raise typer.Exit()


@app.callback()
def _connection(
    ctx: typer.Context,
    url: Annotated[Optional[str], typer.Option(
        envvar="C3_RENDER_URL", help="API base URL (default http://127.0.0.1:8000).")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="C3_RENDER_API_KEY", help="API key (X-C3-RENDER-KEY).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    ctx.obj = Connection(url, api_key)


@contextmanager
def reporting(json_out: bool, conn: Connection) -> Iterator[None]:
    """Turn the client's errors into a message (or JSON) and the exit code."""
    try:
        yield
    except C3RenderError as exc:
        code = EXIT_USAGE if isinstance(exc, InvalidRequest) else EXIT_FAILED
        hint = _hint(exc, conn)
        if json_out:
            body = exc.body or {"error": exc.message}
            _print_json({**body, "http_status": exc.status, "exit_code": code, **({"hint": hint} if hint else {})})
        else:
            head = f"error: {exc.message}" + (f" (HTTP {exc.status})" if exc.status else "")
            if isinstance(exc, ConnectionFailed):
                head = f"error: could not reach the c3-render API at {conn.where()}: {exc.message}"
            stderr.print(Text(head, style="bold red"))
            for detail in exc.details:
                stderr.print(Text(f"  {detail.field}: {detail.message}", style="red"))
            if hint:
                stderr.print(Text(hint), highlight=False)
        raise typer.Exit(code) from None


def _hint(exc: C3RenderError, conn: Connection) -> str | None:
    """What to change when the error is about the connection itself (where, which key)."""
    if isinstance(exc, ConnectionFailed):
        return (f"Is the API running at {conn.url or DEFAULT_URL} (`make run`)? If it runs elsewhere, "
                "set C3_RENDER_URL or pass --url with its address.")
    if isinstance(exc, Unauthorized):
        given = "the key given was refused" if conn.api_key else "no key was given"
        return f"{given}: set C3_RENDER_API_KEY or pass --api-key with one of the API's keys."
    return None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


# -- following a job ---------------------------------------------------------------------
class JobPanel:
    """What the live display shows: status, phase, queue position, progress, elapsed time."""

    def __init__(self, job: Job):
        self.job = job
        self.started = time.monotonic()
        self.spinner = Spinner("dots")

    def update(self, job: Job) -> None:
        self.job = job

    def __rich__(self) -> Group:
        job = self.job
        parts = [escape(f"{job.type.value if job.type else 'job'} {job.id}"), f"[bold]{job.status.value}[/]"]
        if job.phases:
            parts.append(escape("phases: " + phase_trail(job)))
        elif job.phase:
            parts.append(escape(f"phase: {job.phase}"))
        if job.queue_position is not None:
            approx = " (approx.)" if job.queue_position_approximate else ""
            parts.append(f"queue position {job.queue_position}{approx}")
        if job.attempts and job.attempts > 1:
            parts.append(f"attempt {job.attempts}")
        parts.append(f"{time.monotonic() - self.started:.0f}s")
        line = Table.grid(padding=(0, 1))
        line.add_row(self.spinner, Text.from_markup(" · ".join(parts)))
        if job.progress is None:
            return Group(line)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=job.progress, width=40), f"{job.progress:.0%}")
        return Group(line, bar)


def phase_trail(job: Job) -> str:
    """Every phase the job's current attempt entered, in order, each with the time it took
    (a short job passes through some between two polls: they are shown all the same)."""
    entered = sorted((at, name) for name, at in (job.phases or {}).items())
    parts = []
    for n, (at, name) in enumerate(entered):
        end = entered[n + 1][0] if n + 1 < len(entered) else job.finished_at
        parts.append(f"{name} {(end - at).total_seconds():.1f}s" if end else name)
    return " > ".join(parts)


def follow(client: Client, job: Job, timeout: float, live: bool) -> Job:
    """Wait for the job to be final. Ctrl-C stops following (not the job): it says how to
    follow it again and exits 130."""
    if job.is_terminal:
        return job
    try:
        if not live:
            return client.wait(job.id, timeout)
        panel = JobPanel(job)
        with Live(panel, console=stderr, refresh_per_second=8, transient=True):
            final = client.wait(job.id, timeout, on_update=panel.update, long_poll=LIVE_POLL)
        if final.phases:
            stderr.print(Text(f"phases: {phase_trail(final)}"), highlight=False)
        return final
    except KeyboardInterrupt:
        stderr.print(Text(f"\nstopped following job {job.id}; it goes on without you. Follow it again with:\n"
                          f"  c3-render status {job.id} --wait"), highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def finish(client: Client, job: Job, output: Optional[Path], timeout: float, json_out: bool) -> None:
    """Follow the job to its end, then print (and with ``output`` download) its result.
    Exits 1 when it did not succeed."""
    final = follow(client, job, timeout, live=not json_out)
    if not final.succeeded:
        error = final.error or final.status.value
        if json_out:
            _print_json(_dump(final))
        else:
            stderr.print(Text(f"job {final.id} {final.status.value}: {error}", style="bold red"))
        raise typer.Exit(EXIT_FAILED)
    result = client.result(final.id)
    path = client.download(final.id, output) if output else None
    if json_out:
        _print_json({**_dump(final), "result": _dump(result), **({"output": str(path)} if path else {})})
        return
    stderr.print(Text(f"job {final.id} {final.status.value}", style="bold green"))
    if path:
        stdout.print(str(path), highlight=False)
    else:
        stdout.print(result.text if result.text is not None else result.result_url, highlight=False,
                     markup=False)


def started(client: Client, job: Job, what: str, wait: bool, output: Optional[Path], timeout: float,
            json_out: bool) -> None:
    """A new job: follow it (``--wait`` or ``-o``), or print its id (its view with ``--json``)."""
    if wait or output:
        finish(client, job, output, timeout, json_out)
    elif json_out:
        _print_json(_dump(job))
    else:
        stderr.print(f"submitted {what} ({job.status.value})", highlight=False)
        stdout.print(job.id, highlight=False)


# -- submissions: one command per job type, sharing the options below ----------------------------
def _shared_options(
    notify_url: Annotated[Optional[str], typer.Option(help="Webhook URL for the job's events.")] = None,
    max_time: Annotated[Optional[int], typer.Option(help="Max processing seconds from start (default 1200).")] = None,
    complete_in: Annotated[Optional[int], typer.Option(
        help="Seconds from now by which it must finish (default 3600).")] = None,
    webhook_event: Annotated[Optional[list[str]], typer.Option(
        help="Webhook event to receive: start | completed (repeatable) (default completed).")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Same key and body: the same job.")] = None,
    priority: Annotated[Optional[str], typer.Option(
        help="high | normal | low: the lane workers take it from (default normal).")] = None,
    wait: Wait = False,
    output: Output = None,
    timeout: Timeout = 1800.0,
    json_out: JsonOut = False,
) -> None:
    """Only its signature is used: the options every submit command has."""


_SHARED = inspect.signature(_shared_options, eval_str=True).parameters


def submit_command(job_type: JobType) -> Callable[[Callable[..., dict[str, Any]]], None]:
    """Register ``c3-render <type>``: the decorated function declares the job's own options
    and returns its parameters; the shared options (``_shared_options``) are added here."""

    def register(params_of: Callable[..., dict[str, Any]]) -> None:
        own = inspect.signature(params_of, eval_str=True).parameters

        def command(ctx: typer.Context, **options: Any) -> None:
            shared = {name: options.pop(name) for name in _SHARED}
            params = {k: v for k, v in params_of(**options).items() if v is not None}
            json_out = shared["json_out"]
            with reporting(json_out, ctx.obj), ctx.obj.client() as client:
                job = client.submit(job_type, params, notify_url=shared["notify_url"],
                                    max_time=shared["max_time"], complete_in=shared["complete_in"],
                                    webhook_events_filter=shared["webhook_event"],
                                    idempotency_key=shared["idempotency_key"], priority=shared["priority"])
                started(client, job, f"{job_type.value} job", shared["wait"], shared["output"], shared["timeout"],
                        json_out)

        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*own.values(), *_SHARED.values()]]
        ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        command.__signature__ = inspect.Signature([ctx_param, *keyword])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in [ctx_param, *keyword]}
        command.__doc__ = params_of.__doc__
        app.command(job_type.value)(command)

    return register


@submit_command(JobType.CSM)
def _csm(
    text: Annotated[Optional[str], typer.Option(help="The text to speak (or --monologue).")] = None,
    monologue: Annotated[Optional[list[str]], typer.Option(help="One sentence (repeatable).")] = None,
    voice: Annotated[Optional[str], typer.Option(
        help="random | conversational_a | conversational_b | clone (default random).")] = None,
    reference_audio_url: Annotated[Optional[str], typer.Option(help="Voice to clone (with --voice clone).")] = None,
    reference_text: Annotated[Optional[str], typer.Option(help="Transcript of the reference audio.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0.0-2.0 (default 0.9).")] = None,
    topk: Annotated[Optional[int], typer.Option(help="1-1000 (default 50).")] = None,
    max_audio_length: Annotated[Optional[int], typer.Option(help="Milliseconds (default 10000).")] = None,
    pause_duration: Annotated[Optional[int], typer.Option(help="Milliseconds between sentences (default 150).")] = None,
) -> dict[str, Any]:
    """Text to speech (CSM)."""
    return {"text": text, "monologue": monologue, "voice": voice, "reference_audio_url": reference_audio_url,
            "reference_text": reference_text, "temperature": temperature, "topk": topk,
            "max_audio_length": max_audio_length, "pause_duration": pause_duration}


@submit_command(JobType.WHISPER)
def _whisper(
    audio_url: Annotated[str, typer.Option(help="The audio to transcribe (http(s) URL).")],
    model: Annotated[Optional[str], typer.Option(
        help="tiny | base | small | medium | large | large-v2 | large-v3 (default medium).")] = None,
    task: Annotated[Optional[str], typer.Option(help="transcribe | translate (default transcribe).")] = None,
    language: Annotated[Optional[str], typer.Option(help="Language code (default auto-detect).")] = None,
) -> dict[str, Any]:
    """Speech to text (Whisper)."""
    return {"audio_url": audio_url, "model": model, "task": task, "language": language}


@submit_command(JobType.PORTRAIT)
def _portrait(
    image_url: Annotated[str, typer.Option(help="The portrait image (http(s) URL).")],
    audio_url: Annotated[str, typer.Option(help="The speech it says (http(s) URL).")],
) -> dict[str, Any]:
    """Talking-portrait video."""
    return {"image_url": image_url, "audio_url": audio_url}


@submit_command(JobType.ANALYZE)
def _analyze(
    image_url: Annotated[str, typer.Option(help="The image to describe (http(s) URL).")],
) -> dict[str, Any]:
    """Image description."""
    return {"image_url": image_url}


# -- one job -------------------------------------------------------------------------------
def _print_view(job: Job) -> None:
    table = Table.grid(padding=(0, 2))
    for key, value in _dump(job).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(Text(key, style="bold"), Text(str(value)))
    stdout.print(table)


@app.command()
def status(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")],
           wait: Wait = False, timeout: Timeout = 1800.0, json_out: JsonOut = False) -> None:
    """A job's status view. With --wait: follow it until it is final (exit 1 unless it succeeded)."""
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        job = client.status(job_id)
        if wait:
            job = follow(client, job, timeout, live=not json_out)
        if json_out:
            _print_json(_dump(job))
        else:
            _print_view(job)
        if wait and not job.succeeded:
            raise typer.Exit(EXIT_FAILED)


@app.command()
def cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")],
           error: Annotated[Optional[str], typer.Option(help="The reason, stored as the job's error.")] = None,
           remove_data: Annotated[bool, typer.Option(help="Also delete its record and result files.")] = False,
           json_out: JsonOut = False) -> None:
    """Cancel a queued or running job."""
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        answer = client.cancel(job_id, error, remove_data)
        if json_out:
            _print_json(_dump(answer))
        else:
            stderr.print(answer.message)


@app.command()
def retry(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")], wait: Wait = False,
          output: Output = None, timeout: Timeout = 1800.0, json_out: JsonOut = False) -> None:
    """Run a failed, timed_out or cancelled job again, as a new job."""
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        started(client, client.retry(job_id), f"retry of {job_id}", wait, output, timeout, json_out)


@app.command()
def result(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")],
           output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write it to this file.")] = None,
           json_out: JsonOut = False) -> None:
    """A successful job's result: its text, or its file's URL (or the file, with -o)."""
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        answer = client.result(job_id)
        path = client.download(job_id, output) if output else None
        if json_out:
            _print_json({**_dump(answer), **({"output": str(path)} if path else {})})
        elif path:
            stdout.print(str(path), highlight=False)
        else:
            stdout.print(answer.text if answer.text is not None else answer.result_url, highlight=False,
                         markup=False)


# -- many jobs, the service ------------------------------------------------------------------
@app.command()
def jobs(ctx: typer.Context,
         status: Annotated[Optional[str], typer.Option(help="Only jobs in this state.")] = None,
         type: Annotated[Optional[str], typer.Option(help="Only jobs of this type.")] = None,
         limit: Annotated[Optional[int], typer.Option(help="Jobs per page, 1-100 (default 20).")] = None,
         cursor: Annotated[Optional[str], typer.Option(help="Start at this page (a next_cursor).")] = None,
         all_pages: Annotated[bool, typer.Option("--all", help="Follow the cursors to the last page.")] = False,
         json_out: JsonOut = False) -> None:
    """This key's jobs, newest first."""
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        if all_pages:
            found, next_cursor = list(client.iter_jobs(status, type, limit, cursor)), None
        else:
            page = client.jobs(status, type, limit, cursor)
            found, next_cursor = page.jobs, page.next_cursor
        if json_out:
            _print_json({"jobs": [_dump(job) for job in found], "next_cursor": next_cursor})
            return
        print_jobs(found)
        if next_cursor:
            stderr.print(f"more: c3-render jobs --cursor {next_cursor}", highlight=False)


def print_jobs(found: list[Job]) -> None:
    """One line per job. In a pipe the error is printed whole (for grep); on a terminal it
    fills what the line has left, or goes on a line of its own under a narrow one."""
    rows = [[job.id, job.type.value if job.type else "", job.status.value,
             job.created_at.strftime("%m-%d %H:%M:%S") if job.created_at else "", job.error or ""] for job in found]
    head = ["id", "type", "status", "created", "error"]
    widths = [max([len(head[n]), *(len(row[n]) for row in rows)]) for n in range(4)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths))

    terminal = stdout.is_terminal
    room = stdout.width - (sum(widths) + 2 * 4) if terminal else None
    under = terminal and room is not None and room < 24
    stdout.print(Text((line(head[:4]) + ("" if under else "  error")).rstrip(), style="bold"), highlight=False)
    for row in rows:
        error = row[4]
        if not under:
            if room is not None and len(error) > room:
                error = error[:room - 1] + "…"
            stdout.print(Text((line(row[:4]) + "  " + error).rstrip()), highlight=False)
            continue
        stdout.print(Text(line(row[:4]).rstrip()), highlight=False)
        if error:
            indent = "    error: "
            text = indent + error
            if len(text) > stdout.width:
                text = text[:stdout.width - 1] + "…"
            stdout.print(Text(text, style="red"), highlight=False)
# -- batches ---------------------------------------------------------------------------------
BATCH_SIZE = 100  # the most items POST /batch takes: a longer file goes as several batches


def read_items(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, item): one item per line, as POST /batch takes it: {"type", "params",
    "idempotency_key"?}; blank lines and lines starting with # are skipped. A line that is no
    JSON object is a usage error."""
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise typer.BadParameter(f"line {number}: not JSON ({exc})", param_hint="FILE") from None
        if not isinstance(item, dict):
            raise typer.BadParameter(f"line {number}: must be a JSON object {{type, params}}", param_hint="FILE")
        items.append((number, item))
    if not items:
        raise typer.BadParameter("has no items", param_hint="FILE")
    return items


@app.command()
def batch(ctx: typer.Context,
          file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", exists=True, dir_okay=False,
                                               help="One job per line: {\"type\", \"params\", \"idempotency_key\"?}.")],
          priority: Annotated[Optional[str], typer.Option(help="Every item's priority unless it sets one.")] = None,
          notify_url: Annotated[Optional[str], typer.Option(
              help="Every item's webhook URL unless it sets one; also gets batch.completed.")] = None,
          wait: Annotated[bool, typer.Option("--wait", help="Follow the batch until every job is final "
                                                            "(a progress bar on stderr).")] = False,
          timeout: Timeout = 3600.0,
          json_out: JsonOut = False) -> None:
    """Submit the jobs of a JSON Lines file as batches of up to 100; print each line's job id or
    why it was refused. Exit 2 when a line was refused; with --wait, 1 when a job did not succeed."""
    numbered = read_items(file)
    lines, items = [n for n, _ in numbered], [item for _, item in numbered]
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        answers: list[BatchSubmitted] = []
        for start in range(0, len(items), BATCH_SIZE):
            answers.append(client.submit_batch(items[start:start + BATCH_SIZE], priority=priority,
                                               notify_url=notify_url))
        refused = sum(a.rejected for a in answers)
        final: list[Batch] = []
        if wait:
            final = _follow_batches(client, [a.id for a in answers if a.id], timeout, not json_out)
        if json_out:
            _print_json({"batches": [_dump(a) for a in answers], "final": [_dump(b) for b in final]})
        else:
            for chunk, answer in enumerate(answers):
                for item in answer.items:
                    line = lines[chunk * BATCH_SIZE + item.index]  # the file's line number
                    if item.accepted:
                        typer.echo(f"{line}\t{item.id}")
                    else:
                        why = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in item.details)
                        stderr.print(Text(f"line {line}: refused ({item.code}) {item.error}: {why}", style="red"))
            for done in final:
                stderr.print(f"batch {done.id}: " + ", ".join(f"{k}={v}" for k, v in sorted(done.counts.items())),
                             highlight=False)
        if refused:
            raise typer.Exit(EXIT_USAGE)
        if wait and any(status != "success" for done in final for status in done.counts):
            raise typer.Exit(EXIT_FAILED)


def _follow_batches(client: Client, batch_ids: list[str], timeout: float, live: bool) -> list[Batch]:
    """Wait for every batch; a progress bar of final jobs over all of them on stderr."""
    seen: dict[str, Batch] = {}
    columns = (TextColumn("jobs final"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, disable=not live, transient=False) as progress:
        task = progress.add_task("batch", total=None)

        def update(view: Batch) -> None:
            seen[view.id] = view
            progress.update(task, total=sum(b.total for b in seen.values()),
                            completed=sum(b.finished for b in seen.values()))

        deadline = time.monotonic() + timeout
        return [client.wait_batch(batch_id, max(1.0, deadline - time.monotonic()), on_update=update)
                for batch_id in batch_ids]


@app.command()
def health(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """The service's health: queue, jobs, workers, GPUs (exit 1 unless ok)."""
    with reporting(json_out, ctx.obj), ctx.obj.client() as client:
        report = client.health()
        if json_out:
            _print_json(_dump(report))
        else:
            print_health(report.model_dump(mode="json"))
        if report.status != "ok":
            raise typer.Exit(EXIT_FAILED)


HEALTH_SECTIONS = {"queue": "Queue", "jobs": "Jobs", "workers": "Workers", "gpus": "GPU instances"}


def _health_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_health_value(k, v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(_health_value(name, v) for v in value) or "-"
    if name.endswith("_seconds") and isinstance(value, (int, float)):
        return f"{value:g} s"
    return str(value)


def _gpu_line(gpu: dict[str, Any]) -> str:
    """One instance: its state, busy or idle, billed and idle time, and any other field."""
    known = {"slot", "state", "busy", "billed_seconds", "idle_seconds", "ahead"}
    parts = [str(gpu.get("state", "?"))]
    if gpu.get("busy"):
        parts.append("busy")
    elif gpu.get("state") == "running":
        parts.append("idle")
    if gpu.get("ahead"):
        parts.append("launched ahead")
    for name in ("billed_seconds", "idle_seconds"):
        if gpu.get(name) is not None:
            parts.append(f"{name[:-len('_seconds')]} {_health_value(name, gpu[name])}")
    parts += [f"{k.replace('_', ' ')} {_health_value(k, v)}" for k, v in gpu.items() if k not in known]
    return ", ".join(parts)


def print_health(report: dict[str, Any]) -> None:
    """/health as a table: one line per figure under its section, one per GPU instance."""
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column("section", style="bold", no_wrap=True)
    table.add_column("figure", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("status", "", Text(str(report.get("status")), style="green" if report.get("status") == "ok" else "red"))
    for section, title in HEALTH_SECTIONS.items():
        values = report.get(section) or {}
        first = True
        for name, value in values.items():
            if section == "workers" and name == "list" and isinstance(value, list):
                for worker in value:
                    beat = worker.get("last_beat_seconds")
                    table.add_row(title if first else "", str(worker.get("id")),
                                  Text(f"{worker.get('job') or 'idle'}, beat {_health_value('s_seconds', beat)} ago"))
                    first = False
                continue
            if name == "fleet" and isinstance(value, list):
                for gpu in value:
                    table.add_row(title if first else "", f"slot {gpu.get('slot')}", Text(_gpu_line(gpu)))
                    first = False
                continue
            label = name[:-len("_seconds")] if name.endswith("_seconds") else name
            table.add_row(title if first else "", label.replace("_", " "), Text(_health_value(name, value)))
            first = False
    stdout.print(table)


def main() -> None:
    app()

