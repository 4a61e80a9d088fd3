"""Generate k8s/base/prometheusrule.yaml from monitoring/alerts.yml (the one source).

OpenShift's user workload monitoring loads alert rules from PrometheusRule objects, not
from rule files; Prometheus in compose.yaml and promtool's unit tests read the rule
file. This script wraps the file's groups, unchanged, in a PrometheusRule, so the two
cannot drift: tests/test_alerts.py fails when the committed object differs from what
this script writes.

    python tools/prometheusrule.py          rewrite k8s/base/prometheusrule.yaml
    python tools/prometheusrule.py --check  exit 1 if the committed file is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "alerts.yml"
TARGET = ROOT / "k8s" / "base" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from monitoring/alerts.yml by tools/prometheusrule.py: edit the rule file
# and re-run the script (tests/test_alerts.py fails while the two differ).
# OpenShift's user workload monitoring loads these rules for this namespace.
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest (YAML text) holding the rule file's groups."""
    groups = yaml.safe_load(rules_text)["groups"]
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "credit-risk-api"}, "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    """Write the manifest, or with --check report whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    text = render(RULES.read_text(encoding="utf-8"))
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != text:
            print(f"{TARGET} is stale: run python tools/prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
