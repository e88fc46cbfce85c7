"""Command line: a thin click layer over `streamdiff.diff`.

Every user-facing failure is one line on stderr and exit code 2 (click's own usage errors included);
0 means equal within tolerance, 1 different.
"""

from __future__ import annotations

import difflib
import errno
import os
import signal
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TimeRemainingColumn, TransferSpeedColumn

from . import __version__, api, malloc, report
from .datatypes import Report, Status, format_path
from .errors import StreamdiffError
from .mapping.layouts import PRESETS
from .native_log import filtered_native_stderr, mute
from .options import Budget, DiffOptions, MapOptions, Steps, Tolerance
from .plan import DEFAULT_MAX_MEMORY, DEFAULT_SAMPLE_SEED, default_jobs
from .reader.storage import DEFAULT_IO_CONCURRENCY, DEFAULT_TIMEOUT, MAX_IO_CONCURRENCY
from .units import human, parse_size

__all__ = ["cli", "main", "parse_size", "run"]

#: Subtree depth of a bare `--stat`.
STAT_DEPTH = 2


class _UsageError(click.UsageError):
    """A usage error that carries, on the same one line, the usage and where help is: the project's
    errors are one line, and click's and git's usage errors name both."""

    def format_message(self) -> str:
        usage = self.ctx.get_usage().replace("Usage: ", "").strip() if self.ctx else "streamdiff [OPTIONS] A B"
        prog = self.ctx.command_path if self.ctx else "streamdiff"
        return f"{self.message} (usage: {usage}; see '{prog} --help')"


def _not_empty(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: an empty string would silently mean "not given"."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty", param=param)
    return value


def _nearest_option(command: click.Command, ctx: click.Context, name: str) -> str | None:
    """The real option closest to a mistyped one ('--tol' -> '--atol')."""
    names = [o for p in command.get_params(ctx) for o in p.opts + p.secondary_opts if o.startswith("--")]
    close = difflib.get_close_matches(name.split("=")[0], names, n=1, cutoff=0.5)
    return close[0] if close else None


class _Command(click.Command):
    """click.Command whose usage errors name the usage, the help option and the nearest option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            near = _nearest_option(self, ctx, e.option_name)
            msg = f"No such option: {e.option_name}" + (f" (did you mean {near}?)" if near else "")
            raise _UsageError(msg, ctx) from None
        except click.UsageError as e:
            if isinstance(e, _UsageError):
                raise
            raise _UsageError(e.format_message(), ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # raised by the command itself: option combinations
            if isinstance(e, _UsageError):
                raise
            raise _UsageError(e.format_message(), ctx) from None


class _DiffCommand(_Command):
    """`streamdiff A B` stays the command; `streamdiff ls CKPT` lists one checkpoint. A first
    argument `ls` selects the listing (a checkpoint directory named ls is spelled ./ls)."""

    # click types `main` as two overloads (standalone_mode=True returns Never); this override keeps
    # one signature for both, which mypy cannot match against the overloads.
    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **kwargs: Any
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] == "ls":
            return ls_command.main(args[1:], prog_name=f"{prog_name or 'streamdiff'} ls", **kwargs)
        return super().main(args, prog_name=prog_name, **kwargs)


class _Bar:
    """Progress over decoded bytes of both sides, on stderr."""

    def __init__(self, console: Console):
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None

    def start(self, total_bytes: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("comparing", total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def stop(self) -> None:
        self.progress.stop()


@click.command(
    cls=_DiffCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 equal within tolerance, 1 different (values, structure, shape or dtype), 2 error.",
)
@click.argument("a")
@click.argument("b")
@click.option("--atol", type=float, default=0.0, show_default=True, help="Absolute tolerance.")
@click.option(
    "--rtol",
    type=float,
    default=0.0,
    show_default=True,
    help="Relative tolerance. A value differs when |a-b| > atol + rtol*|b|, b from the second checkpoint "
    "(numpy's isclose convention), computed in float64. Integers, bools, PRNG keys and scalars compare exactly.",
)
@click.option(
    "--structure-only", is_flag=True, help="Compare metadata only: paths, shapes, dtypes. Reads no array data."
)
@click.option("--nan-unequal", is_flag=True, help="Count NaN vs NaN at the same position as a mismatch.")
@click.option(
    "--sample",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Quick mode: compare only this fraction of each leaf's blocks (0.01 = 1%, at least one block a leaf), "
    "spread over the leaf. Exit 0 then means no difference in the sample, never identical. 1 compares everything.",
)
@click.option(
    "--sample-seed",
    type=int,
    default=DEFAULT_SAMPLE_SEED,
    show_default=True,
    metavar="N",
    help="Which blocks --sample picks: the same seed picks the same blocks on every run.",
)
@click.option(
    "--step",
    "steps",
    type=int,
    multiple=True,
    help="Step to use where a path is a CheckpointManager root (default: the latest committed step). "
    "Given twice, the first is A's step and the second B's: --step 0 --step 1.",
)
@click.option("--step-a", type=int, default=None, metavar="N", help="Step of A (a CheckpointManager root).")
@click.option("--step-b", type=int, default=None, metavar="N", help="Step of B (a CheckpointManager root).")
@click.option("--item", default=None, metavar="NAME", help="Item to compare when a step holds several PyTree items.")
@click.option(
    "--rules",
    "rules_files",
    multiple=True,
    metavar="FILE",
    help="Mapping rules (TOML) applied to both sides before pairing; repeatable, applied in order.",
)
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default=None,
    help="Apply this layout preset to both sides instead of detecting each side's layout.",
)
@click.option("--no-auto", is_flag=True, help="No layout detection, no presets, no layer alignment.")
@click.option(
    "--layer-axis",
    type=click.IntRange(0, 31),
    default=None,
    metavar="N",
    help="Axis holding the layers when stacking unscanned layers to match a scanned side "
    "(default: what the shapes show, else 1).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Print each canonical path with its source path(s) and transform on each side, then exit. "
    "Reads no array data.",
)
@click.option(
    "--max-memory",
    default=human(DEFAULT_MAX_MEMORY),
    show_default=True,
    metavar="SIZE",
    help="Peak memory budget for the whole process (e.g. 512M, 4G); blocks are sized to fit.",
)
@click.option(
    "--no-shortcut",
    is_flag=True,
    help="Decode every chunk, even when both sides store it with byte-identical contents "
    "(by default such chunks are settled without decoding, and the NaN/Inf counts of their "
    "leaves are then unknown).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 256),
    default=None,
    help=f"Compare threads (default {default_jobs()} here: CPU count, at least 2).",
)
@click.option(
    "--io-concurrency",
    type=click.IntRange(1, MAX_IO_CONCURRENCY),
    default=None,
    metavar="N",
    help=f"Parallel requests to remote storage (gs://); default {DEFAULT_IO_CONCURRENCY}.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    callback=_not_empty,
    help="Run the value diff on Dask: tcp://host:8786 for an existing cluster, local:N for N local "
    "worker processes (needs pip install 'streamdiff[dask]'). --max-memory applies per worker.",
)
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Remote storage (gs://): a request that makes no progress for half of this is retried; a "
    "stalled store fails after about twice this. Also the wait for a Dask scheduler.",
)
@click.option("--stats", "show_stats", is_flag=True, help="Print storage requests, bytes read and time on stderr.")
@click.option(
    "--json",
    "json_path",
    default=None,
    metavar="PATH",
    callback=_not_empty,
    help="Write the full report as JSON ('-' for stdout).",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="PATTERN",
    help="Compare only the leaves whose canonical path matches (rules' patterns: 'params/**', '**/kernel'); "
    "repeatable. Nothing else is read; the others are counted as excluded.",
)
@click.option(
    "--exclude",
    "exclude",
    multiple=True,
    metavar="PATTERN",
    help="Leave out the leaves whose canonical path matches; repeatable. Listed with --verbose, never read.",
)
@click.option(
    "--stat",
    "stat_depth",
    type=click.IntRange(1, 64),
    is_flag=False,
    flag_value=STAT_DEPTH,
    default=None,
    metavar="[=DEPTH]",
    help=f"Summary per subtree (the first DEPTH keys, default {STAT_DEPTH}), worst first, like git diff --stat; "
    "also 'subtrees' in the JSON. Write --stat=3, or put --stat after A and B.",
)
@click.option(
    "--per-layer",
    is_flag=True,
    help="Statistics per layer of scanned leaves (under a 'layers' key; layer axis from the layout, "
    "--layer-axis, else 1): a sparkline of max |a-b| per layer, and 'layers' in the JSON.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="List every leaf, not only the differing ones (and every one-sided or excluded path).",
)
@click.option(
    "--quiet", "-q", is_flag=True, help="No progress bar and no terminal report (exit code only, plus --json)."
)
@click.version_option(__version__, prog_name="streamdiff")
def cli(
    a: str,
    b: str,
    atol: float,
    rtol: float,
    structure_only: bool,
    nan_unequal: bool,
    sample: float | None,
    sample_seed: int,
    steps: tuple[int, ...],
    step_a: int | None,
    step_b: int | None,
    item: str | None,
    rules_files: tuple[str, ...],
    preset: str | None,
    no_auto: bool,
    layer_axis: int | None,
    explain: bool,
    max_memory: str,
    no_shortcut: bool,
    jobs: int | None,
    io_concurrency: int | None,
    scheduler: str | None,
    timeout: float,
    show_stats: bool,
    json_path: str | None,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    stat_depth: int | None,
    per_layer: bool,
    verbose: bool,
    quiet: bool,
) -> int:
    """Compare two Orbax checkpoints A and B leaf by leaf, streaming, with bounded memory.

    A and B may be item directories, step directories or CheckpointManager roots, as local paths,
    file:// or gs:// URLs.

    streamdiff ls CKPT lists one checkpoint from its metadata (see streamdiff ls --help).
    """
    _refuse_output_inside(json_path, {"A": a, "B": b})
    options = DiffOptions(
        tolerance=Tolerance(atol, rtol, not nan_unequal),
        steps=_steps(steps, step_a, step_b),
        item=item,
        mapping=MapOptions(rules_files, preset, not no_auto, layer_axis),
        budget=Budget(parse_size(max_memory, "--max-memory"), jobs, None, io_concurrency, timeout),
        structure_only=structure_only,
        shortcut=not no_shortcut,
        scheduler=scheduler,
        only=only,
        exclude=exclude,
        per_layer=per_layer,
        sample=sample,
        sample_seed=sample_seed,
    )
    if explain:
        m, rows = api.explain(a, b, options)
        report.render_explain(m, rows, _plain_console(False))
        return 0
    err = Console(stderr=True)
    bar = _Bar(err) if err.is_terminal and not quiet and not structure_only else None
    try:
        r = api.compare(a, b, options, progress=bar)
    finally:
        if bar:
            bar.stop()
    _verdict_code.append(r.exit_code)  # what a closed pipe ends with (see main)
    Output(json_path, stat_depth, per_layer, verbose, quiet, show_stats).emit(r)
    return r.exit_code


@dataclass(frozen=True)
class Output:
    """What the CLI shows of a report, and where: --json, --stat, --per-layer, --verbose, --quiet, --stats."""

    json_path: str | None = None
    stat_depth: int | None = None
    per_layer: bool = False
    verbose: bool = False
    quiet: bool = False
    show_stats: bool = False

    def emit(self, r: Report) -> None:
        """The JSON, the terminal report (on stderr when the JSON goes to stdout), the storage line,
        then one `streamdiff: error:` line per unreadable leaf, or one for the verdict of exit 2."""
        if self.json_path:
            _write_json(self.json_path, report.dumps(r, self.stat_depth))
        if not self.quiet:
            console = _plain_console(self.json_path == "-")  # keep stdout pure JSON
            report.render(r, console, verbose=self.verbose, stat_depth=self.stat_depth, per_layer=self.per_layer)
        if self.show_stats:
            mb = r.bytes_read / 1e6
            rate = f", {mb / r.seconds:.0f} MB/s" if r.seconds > 0 else ""
            click.echo(f"storage: {r.requests} requests, {mb:.1f} MB read in {r.seconds:.2f} s{rate}", err=True)
        for x in r.leaves:
            if x.status == Status.ERROR:
                click.echo(f"streamdiff: error: {format_path(x.path)}: {x.message}", err=True)
        if r.exit_code == 2 and not r.errors:
            click.echo(f"streamdiff: error: {report.verdict(r).removeprefix('error: ')}", err=True)


def _steps(steps: tuple[int, ...], step_a: int | None, step_b: int | None) -> Steps:
    """`--step N` (every root side), `--step A --step B` (one each), `--step-a` / `--step-b`; a
    combination that says two things about one side is refused rather than guessed."""
    if len(steps) > 2:
        raise click.UsageError("--step is given at most twice (A's step, then B's)")
    if len(steps) == 2:
        if step_a is not None or step_b is not None:
            raise click.UsageError("--step given twice already sets both sides; drop --step-a/--step-b")
        return Steps(a=steps[0], b=steps[1])
    if steps and step_a is not None and step_b is not None:
        raise click.UsageError("--step-a and --step-b already set both sides; drop --step")
    return Steps(steps[0] if steps else None, step_a, step_b)


def _write_json(path: str, text: str) -> None:
    """`--json PATH`: '-' is stdout; a file that cannot be written is one line, exit 2."""
    if path == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        with open(path, "w") as f:
            f.write(text + "\n")
    except OSError as e:
        raise StreamdiffError(f"cannot write {path}: {e.strerror}") from e


def _refuse_output_inside(out: str | None, inputs: dict[str, str]) -> None:
    """streamdiff never writes to what it reads: a --json file inside (or in place of) a local input
    would overwrite a checkpoint file or add a file the next diff meets."""
    if not out or out == "-":
        return
    target = os.path.realpath(os.path.expanduser(out))
    for name, url in inputs.items():
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("", "file"):
            continue  # remote inputs: a local output path cannot be inside them
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
        root = os.path.realpath(os.path.expanduser(path))
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            raise StreamdiffError(f"--json {out} is inside {name} ({url}): streamdiff never writes to what it reads")


def _plain_console(to_stderr: bool) -> Console:
    """Rich on a terminal; colourless text when piped, as wide as `pipe_width` says."""
    out = Console(stderr=to_stderr)
    if not out.is_terminal:
        out = Console(stderr=to_stderr, width=pipe_width(), no_color=True)
    return out


def pipe_width() -> int:
    """Width of piped output: COLUMNS when set, else the width of a terminal the process still
    has (stderr or stdin, e.g. `streamdiff A B | less`), else report.PIPE_WIDTH."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    fds = [0]
    try:  # sys.stderr, not fd 2: fd 2 may be the native-log filter's pipe (native_log.py)
        fds.insert(0, sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    for fd in fds:
        try:
            if os.isatty(fd):
                return os.get_terminal_size(fd).columns
        except OSError:
            continue
    return report.PIPE_WIDTH


#: The diff's exit code once known: a reader that goes away (`| head -1`) does not change the answer.
_verdict_code: list[int] = []


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps every failure to one stderr line and exit code 2.

    SIGTERM is handled like Ctrl-C (exit 130, one line). A closed pipe on stdout ends quietly with
    the diff's own exit code; stdout that cannot be written (closed, full disk) is an error.
    Native libraries' log lines (tensorstore's absl logging) are kept off stderr.
    """
    malloc.limit_arenas(1)
    malloc.enable_trim()  # a long diff keeps RSS at live memory (see malloc.py)
    _verdict_code.clear()
    previous = _interrupt_on_signals()
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        sys.stdout = _ClosedStdout()
    try:
        with filtered_native_stderr():
            return _main(argv)
    except (KeyboardInterrupt, _Interrupted):  # arrived outside the diff itself (start-up, final flush)
        return _interrupted()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="streamdiff", standalone_mode=False)
        sys.stdout.flush()  # a full disk or closed pipe shows here, not at interpreter exit
    except click.exceptions.Exit as e:
        return e.exit_code
    except SystemExit as e:  # rich's answer to a closed pipe: SystemExit(1) after muting stdout
        return _verdict_code[-1] if _verdict_code else (e.code if isinstance(e.code, int) else 2)
    except click.exceptions.ClickException as e:
        return _error(e.format_message())
    except StreamdiffError as e:
        return _error(str(e))
    except (click.exceptions.Abort, KeyboardInterrupt, _Interrupted):
        return _interrupted()
    except OSError as e:
        if e.errno == errno.EPIPE:
            _discard_stdout()
            return _verdict_code[-1] if _verdict_code else 141
        if e.errno in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EFBIG, errno.EDQUOT):
            _discard_stdout()
            return _error(f"cannot write to stdout: {e.strerror or e}")
        where = f" ({e.filename})" if e.filename else ""
        return _error(f"{e.strerror or e}{where}")
    return int(code) if isinstance(code, int) else 0


def _interrupted() -> int:
    mute()
    click.echo("streamdiff: interrupted", err=True)
    return 130


def _error(message: str) -> int:
    text = " ".join(message.split())  # click's messages may span lines
    click.echo(f"streamdiff: error: {text}", err=True)
    return 2


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot fail a second time."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _ClosedStdout:
    """Stands in for a stdout the process was started without: writing to it is an error."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


#: What `signal.signal` returns and takes back: a handler, SIG_DFL / SIG_IGN, or None (set outside Python).
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class _Interrupted(BaseException):
    """Raised by our SIGINT/SIGTERM handler. Not a KeyboardInterrupt, which click answers by
    printing an empty line before ours; like it, not an Exception, so no `except Exception`
    swallows it."""


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    mute()  # what Dask workers and native code print while shutting down is noise now
    raise _Interrupted


def _interrupt_on_signals() -> dict[int, _SignalHandler]:
    """Ctrl-C and SIGTERM: the same cleanup, one line, exit code 130."""
    previous: dict[int, _SignalHandler] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _interrupt)
        except ValueError:  # not the main thread (an embedding program): leave signals alone
            break
    return previous


def run() -> None:
    code = main()
    # The answer is given: a late signal must not replace it, and what libraries print while the
    # interpreter exits (Dask closing a cluster from an atexit hook after Ctrl-C) is not news.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(code)


@click.command(cls=_Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("ckpt")
@click.option("--step", type=int, default=None, metavar="N", help="Step of a CheckpointManager root (default: latest).")
@click.option("--item", default=None, metavar="NAME", help="Only this PyTree item of a step.")
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the listing as JSON ('-' for stdout).")
@click.option(
    "--io-concurrency",
    type=click.IntRange(1, MAX_IO_CONCURRENCY),
    default=None,
    metavar="N",
    help="Parallel requests (gs://).",
)
def ls_command(ckpt: str, step: int | None, item: str | None, json_path: str | None, io_concurrency: int | None) -> int:
    """List one checkpoint from its metadata only: path, kind, dtype, shape, chunk shape, stored bytes,
    the layout detected, the step picked and the others available. Reads no array data."""
    from . import listing

    _refuse_output_inside(json_path, {"CKPT": ckpt})
    lst = listing.list_checkpoint(ckpt, step=step, item=item, io_concurrency=io_concurrency)
    if json_path:
        _write_json(json_path, listing.dumps(lst))
        if json_path == "-":
            return 0
    listing.render(lst, _plain_console(False))
    return 0
