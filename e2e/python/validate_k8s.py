#!/usr/bin/env python3
"""Validate Kubernetes objects offline against the Kubernetes OpenAPI schemas (PyPI `kubernetes-validate`).

Run by e2e/tests/manifests.rs (`manifests_validate_against_the_kubernetes_schemas`); scripts/test installs the
pinned kubernetes-validate into target/tools/venv.

    validate_k8s.py --k8s-version 1.29 [--k8s-version 1.37] \\
        [--template FILE [--param NAME=VALUE]...] [SOURCE=FILE ...]

- SOURCE=FILE: a YAML stream (e.g. `kubectl kustomize` output, a `storage-controller render` file); every
  non-empty document is validated. SOURCE names it in the report.
- --template FILE: an OpenShift Template. Its `kind: Template` is no Kubernetes kind, so it is PROCESSED the way
  `oc process` does and each resulting object is validated: `${NAME}` is replaced by the parameter's value inside
  strings, a string that is exactly `${{NAME}}` by the value parsed as JSON (numbers, booleans). Values: --param
  first, else the parameter's `value`, else for `generate: expression` a FIXED test value matching its `from`
  expression (only `[class]{n}` and literal characters are supported), else an error for a required parameter.

Strict schemas (unknown fields are errors, as `kubectl apply --validate=strict` would say). Every object is checked
against every --k8s-version. Exit 0 when every object is valid, 1 with one line per problem, 2 on bad usage, 3 when
kubernetes-validate is not installed (the test fails in CI and says how to install it).
"""

import argparse
import json
import re
import sys

try:
    import jsonschema
    import yaml
    import kubernetes_validate
    from kubernetes_validate import utils
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
    from referencing import Registry, Resource
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"kubernetes-validate not importable ({e}): run scripts/test, or "
          "`python3 -m venv target/tools/venv && target/tools/venv/bin/pip install kubernetes-validate==1.37.0`",
          file=sys.stderr)
    sys.exit(3)

PARAM_REF = re.compile(r"\$\{(\{)?([A-Za-z0-9_]+)\}?\}")


def expand_expression(expr):
    """A fixed string matching an OpenShift generator expression made of `[class]{n}` and literal characters."""
    out = []
    i = 0
    while i < len(expr):
        if expr[i] == "[":
            end = expr.index("]", i)
            body = expr[i + 1:end]
            chars = []
            j = 0
            while j < len(body):
                if j + 2 < len(body) and body[j + 1] == "-":
                    chars.extend(chr(c) for c in range(ord(body[j]), ord(body[j + 2]) + 1))
                    j += 3
                else:
                    chars.append(body[j])
                    j += 1
            i = end + 1
            count = 1
            m = re.match(r"\{(\d+)\}", expr[i:])
            if m:
                count = int(m.group(1))
                i += m.end()
            out.append("".join(chars[k % len(chars)] for k in range(count)))
        elif expr[i] in "\\{}()*+?|^$.":
            raise ValueError(f"generator expression {expr!r}: only [class]{{n}} and literals are supported")
        else:
            out.append(expr[i])
            i += 1
    return "".join(out)


def template_values(template, overrides):
    values, problems = {}, []
    for p in template.get("parameters") or []:
        name = p["name"]
        if name in overrides:
            values[name] = overrides[name]
        elif p.get("value") is not None:
            values[name] = str(p["value"])
        elif p.get("generate") == "expression":
            values[name] = expand_expression(p["from"])
            if not re.fullmatch(p["from"], values[name]):
                problems.append(f"parameter {name}: test value {values[name]!r} does not match {p['from']!r}")
        elif p.get("required"):
            problems.append(f"parameter {name} is required and has no value (give --param {name}=...)")
        else:
            values[name] = ""
    return values, problems


def substitute(node, values, problems, where):
    if isinstance(node, dict):
        return {substitute(k, values, problems, where): substitute(v, values, problems, where)
                for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values, problems, where) for v in node]
    if not isinstance(node, str):
        return node
    whole = re.fullmatch(r"\$\{\{([A-Za-z0-9_]+)\}\}", node)
    if whole:
        name = whole.group(1)
        if name not in values:
            problems.append(f"{where}: unknown parameter ${{{{{name}}}}}")
            return node
        try:
            return json.loads(values[name])
        except ValueError:
            return values[name]

    def one(m):
        name = m.group(2)
        if name not in values:
            problems.append(f"{where}: unknown parameter {m.group(0)}")
            return m.group(0)
        return values[name]

    return PARAM_REF.sub(one, node)


def process_template(path, overrides):
    with open(path) as f:
        template = yaml.safe_load(f)
    if template.get("kind") != "Template":
        return [], [f"{path}: kind {template.get('kind')!r}, not Template"]
    values, problems = template_values(template, overrides)
    objects = []
    for i, obj in enumerate(template.get("objects") or []):
        objects.append(substitute(obj, values, problems, f"{path} objects[{i}]"))
    return objects, problems


def load_stream(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def describe(obj):
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def schema_errors(obj, version):
    """Every schema error of `obj` (kubernetes_validate.validate stops at the first one): the same strict schema
    and definitions it uses, run with iter_errors."""
    # kubernetes_validate.validate also checks the version and finds the schema; let it raise what it raises
    # (SchemaNotFoundError, VersionNotSupportedError) and report the first error when there is one.
    try:
        kubernetes_validate.validate(obj, version, strict=True)
        return []
    except ValidationError as first:
        schema_version = [v for v in utils.all_versions()
                          if utils.major_minor(v) <= utils.major_minor(version)][-1]
        api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
        schema_dir = f"v{schema_version}-local-strict"
        schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{obj['kind'].lower()}-{api_version}.json",
                                       version)
        definitions = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
        registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
        errors = list(jsonschema.validators.Draft202012Validator(schema, registry=registry).iter_errors(obj))
        return errors or [first]


def validate(source, obj, versions):
    problems = []
    for version in versions:
        try:
            for e in schema_errors(obj, version):
                path = ".".join(str(p) for p in e.path) or "(object)"
                problems.append(f"{source} {describe(obj)} (Kubernetes {version}): {path}: {e.message}")
        except SchemaNotFoundError as e:
            problems.append(f"{source} {describe(obj)} (Kubernetes {version}): {e.message}")
        except Exception as e:  # VersionNotSupportedError and friends carry .message
            problems.append(f"{source} {describe(obj)} (Kubernetes {version}): "
                            f"{getattr(e, 'message', None) or e!r}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s-version", action="append", required=True, dest="versions")
    ap.add_argument("--template", action="append", default=[])
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("inputs", nargs="*", help="SOURCE=FILE")
    args = ap.parse_args()
    overrides = {}
    for p in args.param:
        if "=" not in p:
            ap.error(f"--param {p!r}: NAME=VALUE")
        k, v = p.split("=", 1)
        overrides[k] = v

    problems, count = [], 0
    batches = []
    for t in args.template:
        objects, tproblems = process_template(t, overrides)
        problems.extend(tproblems)
        batches.append((f"{t} (processed)", objects))
    for item in args.inputs:
        if "=" not in item:
            ap.error(f"{item!r}: SOURCE=FILE")
        source, path = item.split("=", 1)
        batches.append((source, load_stream(path)))
    for source, objects in batches:
        if not objects:
            problems.append(f"{source}: no objects")
        for obj in objects:
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                problems.append(f"{source}: not a Kubernetes object: {str(obj)[:80]}")
                continue
            count += 1
            problems.extend(validate(source, obj, args.versions))
    for p in problems:
        print(p)
    print(f"validated {count} objects against Kubernetes {', '.join(args.versions)} "
          f"(kubernetes-validate {kubernetes_validate.__version__}): {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
