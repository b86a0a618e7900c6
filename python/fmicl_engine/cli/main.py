"""``fmicl-engine``: validate a config, or run it (pretrain, then linear-probe evaluation).

Parses arguments, builds the config and calls the library; no training logic lives here.
``torchrun --nproc_per_node=G -m fmicl_engine run CONFIG`` runs it on G processes.

Exit status and stderr (rank 0 alone prints what every rank found; a rank's own failure is
printed by that rank, prefixed with its number, so the job's log names it):
- 0: done, or stopped by SIGTERM/SIGUSR1 after writing a checkpoint (requeue to resume);
- 1: a training error, e.g. a loss that overflows: one line ``training error: ...``;
- 2: config errors, one line each: ``config error: <key path>: <problem>``;
- 130: stopped by Ctrl-C (SIGINT), after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmicl-engine", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_config_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="a TOML config file, e.g. configs/digits_kl.toml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one value (a TOML value, else a bare string); repeatable")

    validate = commands.add_parser("validate", help="check a config and print it resolved")
    add_config_arguments(validate)
    run = commands.add_parser("run", help="pretrain, then evaluate a linear probe")
    add_config_arguments(run)
    run.add_argument("--out", help="output directory (default: run.out_dir, i.e. runs/<config stem>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fmicl_engine.config import ConfigError, dumps_config, load_config
    from fmicl_engine.loss import NonFiniteLossError

    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.append(f"run.out_dir={json.dumps(args.out)}")
    try:
        cfg = load_config(args.config, overrides)
        if args.command == "validate":
            print(dumps_config(cfg), end="")
            print(f"{args.config}: ok", file=sys.stderr)
            return 0
        from fmicl_engine.train import run

        results = run(cfg, progress=not args.no_progress)
    except ConfigError as err:
        for line in str(err).splitlines():
            _report(f"config error: {line}")
        return EXIT_CONFIG_ERROR
    except NonFiniteLossError as err:
        _report(f"\ntraining error: {err}", every_rank=True)  # (after the progress bar's line)
        return EXIT_TRAINING_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C, while the first one's checkpoint was being written
        _report("interrupted", every_rank=True)
        return EXIT_INTERRUPTED
    except Exception as err:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one line naming the rank; torchrun stops the others
            _report(f"failed: {type(err).__name__}: {err}", every_rank=True)
            return EXIT_TRAINING_ERROR
        raise
    if _rank() == 0:
        print(json.dumps(results))
    return EXIT_INTERRUPTED if results.get("stopped_by") == "SIGINT" else 0


if __name__ == "__main__":
    sys.exit(main())
