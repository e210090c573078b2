"""``gpuwarden dashboards export`` and ``gpuwarden rules export``.

Why these live in the CLI and not only in the repository: an SRE installing gpuwarden
from a wheel has no checkout, yet needs the dashboards that match *the installed
version's* metric names, and the Prometheus rules that match *their* config (defaults
plus overrides). Both are generated from code (``tools/dashboards.py``,
``tools/rules_export.py``), so the installed package can always write them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpuwarden.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, Subcommands


def cmd_dashboards_export(args: argparse.Namespace) -> int:
    from gpuwarden.tools.dashboards import export

    try:
        written = export(Path(args.out))
    except OSError as exc:
        print(f"dashboards export: cannot write to {args.out}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    for path in written:
        print(path)
    return EXIT_OK


def cmd_rules_export(args: argparse.Namespace) -> int:
    from gpuwarden.errors import ConfigError
    from gpuwarden.tools.rules_export import load_rules, omitted, render

    try:
        rules = load_rules(args.config)
    except ConfigError as exc:
        for problem in exc.problems or [str(exc)]:  # one line per problem, as check-config
            print(f"{args.config}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"rules export: cannot read {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    source = f"defaults merged with {args.config}" if args.config else "built-in defaults"
    text = render(rules, source=source)
    if args.out and args.out != "-":
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"rules export: cannot write {args.out}: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
    else:
        sys.stdout.write(text)
    for skipped in omitted(rules):  # visible, but not mixed into the YAML on stdout
        print(f"rules export: {skipped.name} not exported: {skipped.note}", file=sys.stderr)
    return EXIT_OK


def add_commands(subparsers: Subcommands) -> None:
    """Add ``dashboards export`` and ``rules export`` to gpuwarden's parser."""
    dash = subparsers.add_parser("dashboards", help="Grafana dashboards for gpuwarden")
    dash_sub = dash.add_subparsers(dest="dashboards_command", required=True, metavar="COMMAND")
    dexp = dash_sub.add_parser("export", help="write the Grafana dashboard JSON files")
    dexp.add_argument("--out", default="dashboards", metavar="DIR",
                      help="directory to write into (default: ./dashboards)")
    dexp.set_defaults(func=cmd_dashboards_export)

    rules = subparsers.add_parser("rules", help="gpuwarden's alert rules for Prometheus")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    rexp = rules_sub.add_parser(
        "export", help="print the configured rules (defaults included) as Prometheus "
                       "alerting rules YAML")
    rexp.add_argument("--config", metavar="FILE",
                      help="TOML config whose [[rules]] override the defaults")
    rexp.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    rexp.set_defaults(func=cmd_rules_export)
