"""Lint, validate and render charts/alcove with the real Helm library (PyPI helm-python-sdk).

Used by operator/tests/helm.rs:
  helm.py lint CHART [VALUES]            -> JSON: helm lint's result (strict)
  helm.py render CHART RELEASE NS [VALUES] -> JSON: {"manifest": "<YAML stream>", "objects": [...], "notes": "..."}
Bad values (schema) exit 2 with Helm's message on stderr.
"""
import json
import sys

import helm_python as helm


def load_values(path):
    if not path:
        return {}
    with open(path) as f:
        return helm.values_from_yaml(f.read()) or {}


def main(argv):
    cmd, chart = argv[1], argv[2]
    if cmd == "lint":
        values = load_values(argv[3] if len(argv) > 3 else None)
        print(json.dumps(helm.lint(chart, values, strict=True)))
        return 0
    if cmd == "render":
        release, namespace = argv[3], argv[4]
        values = load_values(argv[5] if len(argv) > 5 else None)
        with helm.Chart.load(chart) as c:
            try:
                c.validate_schema(values)
                rendered = c.render(values, name=release, namespace=namespace, is_install=True)
            except helm.HelmError as e:
                print(str(e), file=sys.stderr)
                return 2
        docs, objects, notes = [], [], ""
        for name in sorted(rendered):
            text = rendered[name]
            if name.endswith("NOTES.txt"):
                notes = text
                continue
            for doc in text.split("\n---"):
                parsed = helm.values_from_yaml(doc)
                if parsed:
                    docs.append(f"---\n# Source: {name}\n{doc.strip()}\n")
                    objects.append(parsed)
        print(json.dumps({"manifest": "".join(docs), "objects": objects, "notes": notes}))
        return 0
    print(f"unknown command {cmd}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
