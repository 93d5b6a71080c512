"""`python -m cifar10_levels.cli.report ckpts/`: every run's results.json (and ensemble.py's
ensemble_results.json) as the write-up's results table."""
from __future__ import annotations

import sys
from pathlib import Path

from .arguments import Parser
from ..errors import UserError, exits_cleanly_on_user_error
from ..files import check_writable_file, write_text
from ..tracking.results_table import read_results, results_table


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m cifar10_levels.cli.report",
                    description="Markdown summary of every run (results.json) under a directory.")
    parser.add_argument("root", type=Path, help="directory of runs, e.g. ckpts/")
    parser.add_argument("--output", type=Path, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    if args.output:
        check_writable_file(args.output, "--output")
    if not args.root.is_dir():
        raise UserError(f"{args.root}: no such directory; pass the --output-dir of train.py")
    results = read_results(args.root)
    if not results:
        raise UserError(f"{args.root}: no results.json found; finished runs write one")
    table = results_table(results)
    if args.output:
        write_text(args.output, table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
