#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline: built-in kinds against the
Kubernetes OpenAPI schemas bundled by kubernetes-validate (strict: unknown
fields are errors), custom resources against deploy/schemas/. A custom
resource without a vendored schema is an error.

    deploy_validate.py --kubernetes-version 1.33.0 FILE.yaml...
"""
import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "schemas"
# API groups served by Kubernetes itself: validated by kubernetes-validate.
BUILTIN = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
           "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io"}


def crd_schema(api_version, kind):
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{group}_{version}_{kind}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validate(obj, k8s_version):
    """Returns a list of error strings for one object."""
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    group = api.rpartition("/")[0]
    if group in BUILTIN:
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            return [f"{path}: {e.message}"]
        except kubernetes_validate.utils.SchemaNotFoundError:
            return [f"no Kubernetes {k8s_version} schema for {api} {kind}"]
        return []
    schema = crd_schema(api, kind)
    if schema is None:
        return [f"custom resource {api} {kind} has no schema in {SCHEMAS}"]
    v = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in v.iter_errors(obj)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    total, failed = 0, 0
    for f in args.files:
        for obj in yaml.safe_load_all(open(f)):
            if not obj:
                continue
            total += 1
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            errors = validate(obj, args.kubernetes_version)
            failed += bool(errors)
            for err in errors:
                print(f"  {f}: {name}: {err}", file=sys.stderr)
    print(f"validated {total} objects against Kubernetes {args.kubernetes_version} and vendored CRD schemas: "
          f"{total - failed} valid, {failed} invalid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
