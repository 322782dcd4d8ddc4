"""`curate`: the headless entry point.

    curate run POOL... [--config FILE] [--home DIR] [--refresh]   land files and run the whole graph
"""

import argparse
import sys

from curation_assets.headless import RunConfig, run_graph


def _run(args: argparse.Namespace) -> int:
    config = RunConfig.load(args.config)
    if args.home:
        config.home = args.home
    report = run_graph(args.pool, config, refresh=args.refresh)
    print(f"\noutputs under {report.home}")
    print(f"  tables:     {report.home / 'assets'}")
    failed = [p for p, ok in report.shard_runs.items() if not ok]
    if failed or report.global_run is False:
        print(f"failed shards: {failed}" if failed else "the global run failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curate", description="Instruction-data curation, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="land pool files and materialize the whole graph")
    run.add_argument("pool", nargs="+", help="pool files or folders")
    run.add_argument("--config", help="YAML with home, resources and per-asset config")
    run.add_argument("--home", help="project data folder (default $CURATION_HOME or ./.curation)")
    run.add_argument("--refresh", action="store_true", help="re-run shards that are already materialized")
    run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
