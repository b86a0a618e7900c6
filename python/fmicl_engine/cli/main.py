"""``fmicl-engine``: validate a config, or run it (pretrain, then linear-probe evaluation).

Parses arguments, builds the config and calls the library; no training logic lives here.
A config error exits with status 2 and one line on stderr: ``config error: <key path>: <problem>``;
a loss that overflows during training (e.g. too small a sigma) exits with status 1 and one line.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_TRAINING_ERROR = 1
EXIT_CONFIG_ERROR = 2


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
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except NonFiniteLossError as err:
        print(f"\ntraining error: {err}", file=sys.stderr)  # (after the progress bar's line)
        return EXIT_TRAINING_ERROR
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
