"""calicoctl's resource verbs: get, create, replace, apply, delete, label.

Every verb looks the kind up in model/kinds.py, reads and writes through Resources' generic
methods and shows through cli/kinds.py, so no verb has a branch per kind.
"""

from __future__ import annotations

import sys

from podnet.errors import PodnetError

OUTPUT_HELP = "table (default) | wide | json | yaml | custom-columns=HEAD[:.json.path],..."


def _resources(args, create: bool = False):
    """The store named by --datastore; only verbs that write resources may create it."""
    from podnet.datastore import open_datastore
    from podnet.datastore.resources import Resources

    return Resources(open_datastore(args.datastore, create=create))


def _lookup(word: str):
    from podnet.model.kinds import lookup

    return lookup(word)


# get ---------------------------------------------------------------------------------------


def _namespace_filter(args, kind):
    if not kind.namespaced or getattr(args, "all_namespaces", False):
        return None
    return args.namespace


def cmd_get(args) -> int:
    from podnet.cli.kinds import Context, view

    kind = _lookup(args.kind)
    res = _resources(args)
    namespace = _namespace_filter(args, kind)
    if args.names:
        items = []
        for name in args.names:
            item = res.get(kind, name, namespace)
            if item is None:
                raise PodnetError(f"{kind.name} {name} does not exist")
            items.append(item)
    else:
        items = res.list(kind, namespace)
    show(kind, items, args.output, Context(res), single=len(args.names) == 1)
    return 0


def show(kind, items: list, output: str, ctx, single: bool = False, out=None) -> None:
    """Print resources of one kind in an output format of `-o`."""
    from podnet.cli.kinds import view
    from podnet.cli.output import emit, manifest_list, table

    v = view(kind.name)
    if output in ("json", "yaml"):
        docs = [v.document(i) if v.document else i.to_manifest() for i in items]
        if single:
            data = docs[0]
        elif v.list_kind:
            data = manifest_list(docs) if docs else {"apiVersion": "projectcalico.org/v3",
                                                     "kind": kind.name + "List", "items": []}
        else:
            data = docs
        emit(data, output, out)
        return
    columns = list(v.columns) + (list(v.wide) if output == "wide" else [])
    if output.startswith("custom-columns="):
        columns = _custom_columns(output[len("custom-columns="):], list(v.columns) + list(v.wide), v)
    elif output not in ("table", "wide"):
        raise PodnetError(f"unknown output format {output!r}", OUTPUT_HELP)
    table([h for h, _ in columns], [[f(i, ctx) for _, f in columns] for i in items], out)


def _custom_columns(spec: str, known: list, v) -> list:
    """calicoctl's form (headings of the table or wide output) or kubectl's (HEAD:.path.in.manifest)."""
    by_heading = {h: (h, f) for h, f in known}
    columns = []
    for part in filter(None, spec.split(",")):
        heading, _, path = part.partition(":")
        if path:
            columns.append((heading, _path_getter(path, v)))
        elif heading.upper() in by_heading:
            columns.append(by_heading[heading.upper()])
        else:
            raise PodnetError(f"no column {heading!r}", "choose from " + ", ".join(by_heading) +
                              ", or give HEAD:.json.path")
    if not columns:
        raise PodnetError("custom-columns needs at least one column")
    return columns


def _path_getter(path: str, v):
    steps = [s for s in path.strip().lstrip(".").split(".") if s]

    def get(item, ctx):
        value = v.document(item) if v.document else item.to_manifest()
        for step in steps:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return value

    return get


# create / replace / apply -----------------------------------------------------------------------


def documents(path: str) -> list[dict]:
    """The manifests of a file (or stdin for '-'), with calicoctl's and kubectl's List kinds opened."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
    except OSError as e:
        raise PodnetError(f"cannot read {path}: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise PodnetError(f"{path} is not valid YAML: {e}") from None
    out = []
    for d in docs:
        if isinstance(d, dict) and str(d.get("kind", "")).endswith("List") and "items" in d:
            out += d["items"] or []
        else:
            out.append(d)
    return out


def _parsed(path: str) -> list[tuple[object, object]]:
    """(kind, resource) of every document, all validated before anything is written."""
    from podnet.model.kinds import kind_of, parse_resource

    out = []
    for doc in documents(path):
        resource = parse_resource(doc)
        out.append((kind_of(doc), resource))
    return out


def _write(args, mode: str) -> int:
    res = _resources(args, create=True)
    for kind, resource in _parsed(args.filename):
        from podnet.datastore.resources import STORAGE

        name = STORAGE[kind.name].name(resource)
        print(f"{kind.name.lower()}/{name} {res.write(kind, resource, mode)}")
    return 0


def cmd_create(args) -> int:
    return _write(args, "create")


def cmd_replace(args) -> int:
    return _write(args, "replace")


def cmd_apply(args) -> int:
    return _write(args, "apply")


# delete ------------------------------------------------------------------------------------------


def cmd_delete(args) -> int:
    from podnet.datastore.resources import STORAGE

    if args.filename:
        if args.kind:
            raise PodnetError("give either -f FILE or KIND NAME, not both")
        targets = [(kind, STORAGE[kind.name].name(r), STORAGE[kind.name].namespace(r) or None)
                   for kind, r in _parsed(args.filename)]
    else:
        if not args.kind or not args.names:
            raise PodnetError("say what to delete", "podnet delete KIND NAME [NAME ...] or podnet delete -f FILE")
        kind = _lookup(args.kind)
        targets = [(kind, name, args.namespace if kind.namespaced else None) for name in args.names]
    res = _resources(args)
    missing = []
    for kind, name, namespace in targets:
        _check_deletable(kind)
        if res.remove(kind, name, namespace):
            print(f"{kind.name.lower()}/{name} deleted")
        else:
            missing.append(f"{kind.name} {name}")
    if missing:
        raise PodnetError(f"{', '.join(missing)} does not exist" if len(missing) == 1
                          else f"these do not exist: {', '.join(missing)}")
    return 0


# What deleting a record alone would break, and the command that does it safely instead.
_DELETE_ELSEWHERE = {
    "Node": "a node's addresses and blocks must go with it: use `podnet node delete NAME`",
}


def _check_deletable(kind) -> None:
    if kind.name in _DELETE_ELSEWHERE:
        raise PodnetError(f"cannot delete a {kind.name} this way", _DELETE_ELSEWHERE[kind.name])
    if not kind.writable:
        raise PodnetError(f"cannot delete {kind.plural}", "podnet writes and removes them itself")


# label -------------------------------------------------------------------------------------------


def cmd_label(args) -> int:
    """`podnet label KIND NAME key=value | key- [--overwrite]`, as calicoctl and kubectl do it."""
    import dataclasses

    from podnet.model import fields
    from podnet.model.errors import ValidationError

    kind = _lookup(args.kind)
    if not kind.writable:
        raise PodnetError(f"cannot label {kind.plural}", "podnet writes them itself")
    res = _resources(args)
    for _ in range(20):
        resource = res.get(kind, args.name)
        if resource is None:
            raise PodnetError(f"{kind.name} {args.name} does not exist")
        if not hasattr(resource, "labels"):
            raise PodnetError(f"{kind.plural} have no labels")
        labels = dict(resource.labels)
        for change in args.changes:
            if change.endswith("-") and "=" not in change:
                if labels.pop(change[:-1], None) is None:
                    raise PodnetError(f"{kind.name} {args.name} has no label {change[:-1]!r}")
                continue
            key, eq, value = change.partition("=")
            if not eq:
                raise PodnetError(f"{change!r} is neither key=value nor key-")
            if key in labels and labels[key] != value and not args.overwrite:
                raise PodnetError(f"label {key!r} is already {labels[key]!r}", "add --overwrite to change it")
            labels[key] = value
        try:
            fields.labels("metadata.labels", labels)
            changed = dataclasses.replace(resource, labels=labels)
        except ValidationError as e:
            raise PodnetError(str(e)) from None
        try:
            result = res.write(kind, changed, "replace")
        except PodnetError:
            continue  # changed under us: read again
        print(f"{kind.name.lower()}/{args.name} {'labeled' if result != 'unchanged' else 'unchanged'}")
        return 0
    raise PodnetError(f"could not label {kind.name} {args.name}: too much concurrent change, try again")


# parsers -----------------------------------------------------------------------------------------


def register(sub) -> None:
    from podnet.model.kinds import names

    g = sub.add_parser("get", help="list resources (calicoctl's kinds and names)")
    g.add_argument("kind", help=names())
    g.add_argument("names", nargs="*", metavar="NAME")
    g.add_argument("-o", "--output", default="table", help=OUTPUT_HELP)
    g.add_argument("-n", "--namespace", default="default", help="for namespaced kinds (default: default)")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.set_defaults(func=cmd_get)

    for verb, func, text in (("create", cmd_create, "create resources (fails if one exists)"),
                             ("replace", cmd_replace, "replace resources (fails if one does not exist)"),
                             ("apply", cmd_apply, "create or update resources from calicoctl-style YAML")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("-f", "--filename", required=True, help="a YAML file of manifests, or - for stdin")
        p.set_defaults(func=func)

    d = sub.add_parser("delete", help="delete resources by KIND NAME or from a file")
    d.add_argument("kind", nargs="?")
    d.add_argument("names", nargs="*", metavar="NAME")
    d.add_argument("-f", "--filename", help="delete what this file's manifests name")
    d.add_argument("-n", "--namespace", default="default", help="for namespaced kinds (default: default)")
    d.set_defaults(func=cmd_delete)

    lb = sub.add_parser("label", help="set (key=value) or remove (key-) labels")
    lb.add_argument("kind")
    lb.add_argument("name")
    lb.add_argument("changes", nargs="+", metavar="key=value|key-")
    lb.add_argument("--overwrite", action="store_true", help="change a label that has another value")
    lb.set_defaults(func=cmd_label)
