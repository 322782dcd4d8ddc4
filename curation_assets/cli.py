"""`curate`: the headless entry point.

    curate run [POOL...] [--config FILE] [--home DIR] [--refresh] land files and run the whole graph
    curate why ROW [--home DIR] [--json]                            one sample's story, source to decision
    curate export [--format F ...] [--out DIR] [--home DIR]         write the subset for training
    curate compare [--home DIR] [--json]                            subset vs baselines vs base model, per task
    curate report [--out FILE] [--home DIR]                         one self-contained HTML page to share

Every command reads the project config: `--config FILE`, else `$CURATION_CONFIG`, else
./curation.yaml (the file `dagster dev` loads too); `--home` overrides its data home.
"""

import argparse
import re
import sys
from pathlib import Path

from curation_assets.headless import run_graph
from curation_assets.project import ProjectConfig
from resources.storage import CurationStorage


def _config(args) -> ProjectConfig:
    config = ProjectConfig.load(getattr(args, "config", None))
    if args.home:
        config.home = str(Path(args.home).expanduser().resolve())
    return config


def _storage(args, config: ProjectConfig | None = None) -> CurationStorage:
    config = config or _config(args)
    settings = dict(config.resources.get("storage") or {})
    if config.home:
        settings["home"] = config.home
    return CurationStorage(**settings)


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    report = run_graph(args.pool, config, refresh=args.refresh)
    home = report.home
    print(f"\noutputs under {home}")
    for label, path in [
        ("selected subset", home / "assets" / "selected_subset.parquet"),
        ("selection reasons", home / "assets" / "selection_reasons.parquet"),
        ("exports", home / "exports" / "selected_subset"),
        ("all tables", home / "assets"),
    ]:
        if path.exists():
            print(f"  {label + ':':<19}{path}")
    print("explain a row with: curate why <row_id or file:record>" + (f" --home {home}" if args.home else "") + (f" --config {args.config}" if args.config else ""))
    print("\n" + report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _why(args: argparse.Namespace) -> int:
    from curation_assets.why import story, story_json

    try:
        print(story_json(_storage(args), args.row) if args.json else story(_storage(args), args.row))
    except LookupError as exc:
        print(f"curate why: {exc}", file=sys.stderr)
        return 2
    return 0


def _export(args: argparse.Namespace) -> int:
    import polars as pl

    from curation_assets.methods.export import export_subset

    storage = _storage(args)
    path = storage.asset_file("selected_subset")
    if not path.exists():
        print(f"curate export: no selected_subset under {storage.root}; run the graph first", file=sys.stderr)
        return 2
    written = export_subset(pl.read_parquet(path), args.out or storage.exports / "selected_subset", args.format)
    for fmt, file in written.items():
        print(f"{fmt:<9}{file}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import polars as pl

    from curation_assets.subset_training import comparison_table

    storage = _storage(args)
    path = storage.asset_file("subset_evaluation")
    if not path.exists():
        print(f"curate compare: no subset_evaluation under {storage.root}; materialize subset_model and subset_evaluation first", file=sys.stderr)
        return 2
    table = comparison_table(pl.read_parquet(path))
    if args.json:
        print(table.write_json())
        return 0
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_formatting="ASCII_MARKDOWN", tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, fmt_str_lengths=40):
        print(table)
    print("answer_loss: mean NLL per answer token (lower is better); accuracy: the metric column; *_vs_base: difference to the base model (zero-shot)")
    return 0


SECRET_KEY = re.compile(r"key|token|secret|password", re.IGNORECASE)


def _shown(settings):
    """Settings for the report: values of secret-looking keys hidden ({env: NAME} stays, it is a name)."""
    if isinstance(settings, dict):
        return {k: ("[hidden]" if SECRET_KEY.search(str(k)) and not isinstance(v, dict) and v is not None else _shown(v)) for k, v in settings.items()}
    return settings


def _report(args: argparse.Namespace) -> int:
    from curation_assets.headless import open_instance
    from curation_assets.report import build_report

    config = _config(args)
    storage = _storage(args, config)
    try:
        page = build_report(storage, open_instance(), _shown({"config_file": str(config.path), "assets": config.assets, "resources": config.resources}))
    except FileNotFoundError as exc:
        print(f"curate report: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else storage.exports / "selection_report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"report: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curate", description="Instruction-data curation, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="land pool files and materialize the whole graph")
    run.add_argument("pool", nargs="*", help="pool files or folders (none: re-run the landed pool, repairing missing or unreadable outputs)")
    run.add_argument("--config", help="project config (default $CURATION_CONFIG or ./curation.yaml)")
    run.add_argument("--home", help="data home (default: the config's home, $CURATION_HOME or ./.curation)")
    run.add_argument("--refresh", action="store_true", help="re-run shards that are already materialized")
    run.set_defaults(func=_run)
    why = sub.add_parser("why", help="explain one row: source, tags, tree, scores, decision")
    why.add_argument("row", help="row_id (or a unique prefix), or FILE:RECORD")
    why.add_argument("--home", help="project data folder")
    why.add_argument("--config", help="project config (default $CURATION_CONFIG or ./curation.yaml)")
    why.add_argument("--json", action="store_true", help="machine-readable output")
    why.set_defaults(func=_why)
    export = sub.add_parser("export", help="write the selected subset for training frameworks")
    export.add_argument("--format", action="append", choices=["alpaca", "sharegpt", "openai", "parquet"], help="repeatable; default all")
    export.add_argument("--out", help="output folder (default <home>/exports/selected_subset)")
    export.add_argument("--home", help="project data folder")
    export.add_argument("--config", help="project config (default $CURATION_CONFIG or ./curation.yaml)")
    export.set_defaults(func=_export)
    compare = sub.add_parser("compare", help="print subset_evaluation: the subset against baselines and the base model, per task")
    compare.add_argument("--home", help="project data folder")
    compare.add_argument("--config", help="the run's YAML config (for its home)")
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    compare.set_defaults(func=_compare)
    report = sub.add_parser("report", help="write one self-contained HTML page: settings, summaries, pictures, reasons")
    report.add_argument("--out", help="output file (default <home>/exports/selection_report.html)")
    report.add_argument("--home", help="project data folder")
    report.add_argument("--config", help="project config (default $CURATION_CONFIG or ./curation.yaml)")
    report.set_defaults(func=_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
