"""``fmicl-engine``: validate a config, or run it (pretrain, then evaluate the frozen encoder as the
config's ``[eval]`` section says); evaluate, export, compare, profile.

Parses arguments, builds the config and calls the library; no training logic lives here.
``torchrun --nproc_per_node=G -m fmicl_engine run CONFIG`` runs it on G processes.

Exit status and stderr (rank 0 alone prints what every rank found; a rank's own failure is
printed by that rank, prefixed with its number, so the job's log names it):
- 0: done (``profile``: the table on stdout, DIR/profile.json), or stopped by SIGTERM/SIGUSR1
  after writing a checkpoint (requeue to resume);
- 1: a run-time error, one line: ``training error: ...`` (e.g. a loss that overflows), ``data
  error: ...`` (an unreadable image under on_bad_file = "error"), ``error: ...`` (a full disk, a
  read-only directory: the errno's name, the path and what to do), ``failed: ...`` (anything
  else; ``--debug`` shows its traceback);
- 2: config errors, one line each: ``config error: <key path>: <problem>``, or a bad export;
- 130: stopped by Ctrl-C (SIGINT), after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fmicl_engine import __version__

EXIT_TRAINING_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _report(message: str, *, every_rank: bool = False) -> None:
    """One line on stderr: from rank 0 (all ranks found it), or from this rank, naming it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not every_rank and _rank() != 0:
            return
        if every_rank:
            message = f"rank {_rank()}: {message}"
    print(message, file=sys.stderr)


DESCRIPTION = ("Validate a config, or run it: pretrain, then evaluate the frozen encoder as the config's [eval] "
               "section says (what each dataset gets: docs/CONFIG.md). Evaluate a checkpoint, export its encoder, "
               "compare runs. Profile the training step.")


def build_parser() -> argparse.ArgumentParser:
    # Plain text only: --help prints these strings as they are (no reStructuredText markup).
    parser = argparse.ArgumentParser(prog="fmicl-engine", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_config_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="a TOML config file, e.g. configs/digits_kl.toml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one value (a TOML value, else a bare string); repeatable")

    validate = commands.add_parser("validate", help="check a config and print it resolved")
    add_config_arguments(validate)
    run = commands.add_parser("run", help="pretrain, then evaluate the frozen encoder ([eval])")
    add_config_arguments(run)
    run.add_argument("--out", metavar="DIR", help="output directory (default: run.out_dir, i.e. runs/<config stem>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint: kNN, linear probe, geometry (eval.json)")
    add_config_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH",
                          help="a checkpoint file, or a run directory (its newest valid checkpoint)")
    evaluate.add_argument("--out", metavar="DIR", help="where eval.json and the figures go (default: run.out_dir)")
    export = commands.add_parser("export", help="write a checkpoint's encoder as a plain state_dict")
    export.add_argument("checkpoint", help="a checkpoint file, or a run directory (its newest valid checkpoint)")
    export.add_argument("--out", required=True, metavar="FILE", help="the .pt file to write")
    export.add_argument("--format", choices=("torchvision", "engine"), default="torchvision",
                        help="torchvision: keys of torchvision.models.<arch>() without fc (default); engine: the "
                             "engine's encoder")
    profile = commands.add_parser("profile", help="time the training step and its parts; name the bottleneck")
    add_config_arguments(profile)
    profile.add_argument("--steps", type=int, default=20, help="timed steps (default 20), and repetitions of each "
                         "part timed alone")
    profile.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5): cuDNN autotuning, "
                         "torch.compile, the loader's start")
    profile.add_argument("--out", metavar="DIR", help="where profile.json goes (default: run.out_dir/profile)")
    profile.add_argument("--trace", action="store_true", help="also record a torch.profiler trace of a few steps "
                         "(DIR/trace/rank<r>.pt.trace.json: Perfetto, chrome://tracing, TensorBoard)")
    profile.add_argument("--synthetic-data", action="store_true", help="random batches already on the device in "
                         "place of the data pipeline: the compute ceiling")
    compare = commands.add_parser("compare", help="one table and figure over several run directories")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", metavar="DIR", default="runs/compare", help="where compare.md goes")
    return parser


def _config(args):
    from fmicl_engine.config import load_config

    overrides = list(args.overrides)
    if args.command in ("run", "profile") and args.out:  # (profile: so that --out is checked like run's)
        overrides.append(f"run.out_dir={json.dumps(args.out)}")
    return load_config(args.config, overrides)


def _validate(args) -> int:
    from fmicl_engine.config import dumps_config

    print(dumps_config(_config(args)), end="")
    print(f"{args.config}: ok", file=sys.stderr)
    return 0


def _run(args) -> int:
    from fmicl_engine.train import run

    results = run(_config(args), progress=not args.no_progress)
    if _rank() == 0:
        print(json.dumps(results))
    return EXIT_INTERRUPTED if results.get("stopped_by") == "SIGINT" else 0


def _eval(args) -> int:
    from pathlib import Path

    from fmicl_engine.eval.evaluate import evaluate_checkpoint

    cfg = _config(args)
    report = evaluate_checkpoint(cfg, args.checkpoint, Path(args.out or cfg.run.out_dir),
                                 log=lambda line: print(line, file=sys.stderr))
    if report is not None:
        print(json.dumps({k: v for k, v in report.items() if k not in ("similarity_histograms", "protocol")}))
    return 0


def _export(args) -> int:
    from fmicl_engine.eval.export import export_encoder

    exported = export_encoder(args.checkpoint, args.out, args.format)
    print(exported.how_to_load())
    return 0


def _compare(args) -> int:
    from pathlib import Path

    from fmicl_engine.eval.report import compare_runs

    compare_runs([Path(r) for r in args.runs], Path(args.out), log=lambda line: print(line, file=sys.stderr))
    print((Path(args.out) / "compare.md").read_text(), end="")
    return 0


def _profile(args) -> int:
    from fmicl_engine.train.profile import format_table, profile

    report = profile(_config(args), steps=args.steps, warmup=args.warmup, out_dir=args.out, trace=args.trace,
                     synthetic_data=args.synthetic_data)
    if _rank() == 0:
        print(format_table(report))
    return 0


COMMANDS = {"validate": _validate, "run": _run, "eval": _eval, "export": _export, "compare": _compare,
            "profile": _profile}


# What to do about the OSErrors a run meets (by errno name): the line names the path and this.
OS_ERROR_ADVICE = {
    "ENOSPC": "free space on that disk and rerun the same command (it resumes from the last checkpoint)",
    "EDQUOT": "free space within your quota and rerun the same command (it resumes from the last checkpoint)",
    "EROFS": "that file system is read-only: choose a writable --out (run.out_dir)",
    "EACCES": "no permission for that path: fix its permissions, or choose another (--out for run.out_dir)",
    "EPERM": "no permission for that path: fix its permissions, or choose another (--out for run.out_dir)",
    "ENOTDIR": "a part of that path is a file: choose another path",
    "ENOENT": "it vanished while the command ran: check the path (a removed or unmounted directory?)",
}


def describe_os_error(err: OSError) -> str:
    """One line: the error's name, the path it names and what to do; the engine's own OSErrors
    (a checkpoint write) already say all of this."""
    import errno

    from fmicl_engine.train.checkpoint import CheckpointWriteError

    if isinstance(err, CheckpointWriteError) or err.errno is None:
        return str(err)
    name = errno.errorcode.get(err.errno, f"errno {err.errno}")
    path = f": {err.filename}" if err.filename is not None else ""
    advice = OS_ERROR_ADVICE.get(name)
    return f"{name}: {err.strerror}{path}" + (f"; {advice}" if advice else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fmicl_engine.config import ConfigError
    from fmicl_engine.data.image_index import BadImageFileError
    from fmicl_engine.eval.export import ExportError
    from fmicl_engine.loss import NonFiniteLossError
    from fmicl_engine.train.loop import TrainingDivergedError

    try:
        return COMMANDS[args.command](args)
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, ConfigError):
            for line in str(err).splitlines():
                _report(f"config error: {line}")
            return EXIT_CONFIG_ERROR
        if isinstance(err, ExportError):
            _report(f"export error: {err}")
            return EXIT_CONFIG_ERROR
        if isinstance(err, (NonFiniteLossError, TrainingDivergedError)):
            _report(f"\ntraining error: {err}", every_rank=True)  # (after the progress bar's line)
        elif isinstance(err, BadImageFileError):
            _report(f"data error: {err}", every_rank=True)
        elif isinstance(err, OSError):  # a full disk, a read-only or vanished directory
            _report(f"error: {describe_os_error(err)}", every_rank=True)
        else:  # one line naming the rank and the error; --debug shows where
            _report(f"failed: {type(err).__name__}: {err} (rerun with --debug for the traceback)", every_rank=True)
        return EXIT_TRAINING_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C, while the first one's checkpoint was being written
        _report("interrupted", every_rank=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
