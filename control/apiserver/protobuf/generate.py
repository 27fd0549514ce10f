#!/usr/bin/env python3
"""Generate control/apiserver/src/protobuf/schema.rs, the table the protobuf decoder walks.

Run from anywhere (Python 3.11, standard library only):

    python3 control/apiserver/protobuf/generate.py

Inputs, read from the cargo registry (run `cargo fetch` first if they are missing):
  * k8s-pb 0.9.0: message names, field numbers and protobuf kinds (prost attributes).
  * k8s-openapi 0.29.0, module v1_33: the JSON name of every field (the strings its
    Deserialize impls match), and which fields are required (not `Option`), which is
    how upstream marks a Go field whose json tag has no `omitempty`.
  * go_pointers.txt beside this script: the Go fields that are pointers. Neither crate
    records that, and it decides whether a zero value that is on the wire reaches the
    JSON (see the comment at the top of that file).

Only the fields that exist in v1_33 are emitted: a 1.33 apiserver skips the others as
unknown protobuf fields, and so does our decoder.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

PB_VERSION = "0.9.0"
OPENAPI_VERSION = "0.29.0"
OPENAPI_MODULE = "v1_33"

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "protobuf" / "schema.rs"
POINTERS = HERE / "go_pointers.txt"

# (k8s-pb message, apiVersion, kind): the objects a request body may hold.
TOP_LEVEL = [
    ("api.core.v1.Namespace", "v1", "Namespace"),
    ("api.core.v1.Pod", "v1", "Pod"),
    ("api.core.v1.Node", "v1", "Node"),
    ("api.core.v1.Service", "v1", "Service"),
    ("api.core.v1.Endpoints", "v1", "Endpoints"),
    ("api.core.v1.ConfigMap", "v1", "ConfigMap"),
    ("api.core.v1.Secret", "v1", "Secret"),
    ("api.core.v1.ServiceAccount", "v1", "ServiceAccount"),
    ("api.core.v1.Event", "v1", "Event"),
    ("api.core.v1.PersistentVolumeClaim", "v1", "PersistentVolumeClaim"),
    ("api.core.v1.PersistentVolume", "v1", "PersistentVolume"),
    ("api.storage.v1.StorageClass", "storage.k8s.io/v1", "StorageClass"),
    ("api.core.v1.Binding", "v1", "Binding"),
    ("api.apps.v1.Deployment", "apps/v1", "Deployment"),
    ("api.apps.v1.ReplicaSet", "apps/v1", "ReplicaSet"),
    ("api.apps.v1.DaemonSet", "apps/v1", "DaemonSet"),
    ("api.apps.v1.StatefulSet", "apps/v1", "StatefulSet"),
    ("api.apps.v1.ControllerRevision", "apps/v1", "ControllerRevision"),
    ("api.batch.v1.Job", "batch/v1", "Job"),
    ("api.batch.v1.CronJob", "batch/v1", "CronJob"),
    ("api.discovery.v1.EndpointSlice", "discovery.k8s.io/v1", "EndpointSlice"),
    ("api.coordination.v1.Lease", "coordination.k8s.io/v1", "Lease"),
    ("api.events.v1.Event", "events.k8s.io/v1", "Event"),
    ("api.scheduling.v1.PriorityClass", "scheduling.k8s.io/v1", "PriorityClass"),
    ("api.policy.v1.Eviction", "policy/v1", "Eviction"),
    ("api.policy.v1.PodDisruptionBudget", "policy/v1", "PodDisruptionBudget"),
    ("api.autoscaling.v1.Scale", "autoscaling/v1", "Scale"),
    ("api.authentication.v1.TokenRequest", "authentication.k8s.io/v1", "TokenRequest"),
    ("api.networking.v1.NetworkPolicy", "networking.k8s.io/v1", "NetworkPolicy"),
    ("api.networking.v1.Ingress", "networking.k8s.io/v1", "Ingress"),
    ("api.networking.v1.IngressClass", "networking.k8s.io/v1", "IngressClass"),
    ("api.rbac.v1.Role", "rbac.authorization.k8s.io/v1", "Role"),
    ("api.rbac.v1.RoleBinding", "rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("api.rbac.v1.ClusterRole", "rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("api.rbac.v1.ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("api.authentication.v1.SelfSubjectReview", "authentication.k8s.io/v1", "SelfSubjectReview"),
    ("api.authorization.v1.SelfSubjectAccessReview", "authorization.k8s.io/v1", "SelfSubjectAccessReview"),
    ("api.authorization.v1.SelfSubjectRulesReview", "authorization.k8s.io/v1", "SelfSubjectRulesReview"),
    ("api.authorization.v1.SubjectAccessReview", "authorization.k8s.io/v1", "SubjectAccessReview"),
    # Registered in every group version as well; the decoder knows that.
    ("apimachinery.pkg.apis.meta.v1.DeleteOptions", "meta.k8s.io/v1", "DeleteOptions"),
]

# Messages with a JSON form of their own: the decoder handles them by name.
SPECIAL = {
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.runtime.RawExtension": "RawExtension",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "FieldsV1",
}
# Special messages the decoder does not handle; reaching one is a generator error.
UNSUPPORTED = {
    "apimachinery.pkg.apis.meta.v1.Duration",
    "apimachinery.pkg.apis.meta.v1.Fields",
}

SCALARS = {"string": "Str", "bool": "Bool", "int32": "I32", "int64": "I64", "double": "F64", "bytes": "Bytes"}


def crate_src(name: str, version: str) -> Path:
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted(glob.glob(str(home / "registry" / "src" / "*" / f"{name}-{version}" / "src")))
    if not found:
        sys.exit(f"{name} {version} is not in {home}/registry/src: run `cargo fetch` in the workspace")
    return Path(found[0])


@dataclass
class PbField:
    rust: str
    tag: int
    kind: str  # a SCALARS key, "message" or "map"
    repeated: bool
    type_ref: str | None = None  # message (or map value message) key
    map_value: str | None = None  # map value kind: string, bytes or message
    optional_marker: bool = False  # the Go comment says `+optional`


@dataclass
class PbMessage:
    key: str
    name: str
    fields: list[PbField] = field(default_factory=list)


ATTR = re.compile(
    r"((?:[ \t]*///[^\n]*\n)*)[ \t]*#\[prost\((.*?)\)\]\s*pub (?:r#)?(\w+):(.*?)(?=\n[ \t]*(?:///|#\[prost)|\Z)", re.S
)
TYPE_PATH = re.compile(r"((?:super::)*(?:[a-z_0-9]+::)*)([A-Z]\w*)")
NOT_MESSAGES = {"Option", "Vec", "String", "BTreeMap", "Box"}


def resolve(module: list[str], path: str, name: str) -> str:
    parts = [p for p in path.split("::") if p]
    if parts and parts[0] in ("core", "prost", "alloc", "std"):
        return ""
    base = list(module)
    rest = []
    for p in parts:
        if p == "super":
            base.pop()
        else:
            rest.append(p)
    return ".".join((base + rest) if parts else module) + "." + name


def parse_pb(src: Path) -> tuple[dict[str, PbMessage], dict[str, tuple[str, str]]]:
    messages: dict[str, PbMessage] = {}
    resources: dict[str, tuple[str, str]] = {}
    for path in sorted(src.rglob("mod.rs")):
        module = list(path.parent.relative_to(src).parts)
        text = path.read_text()
        for m in re.finditer(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.S | re.M):
            key = ".".join(module + [m.group(1)])
            msg = PbMessage(key, m.group(1))
            for a in ATTR.finditer(m.group(2)):
                doc, attr, rust, ty = a.group(1), a.group(2), a.group(3), " ".join(a.group(4).split())
                optional_marker = re.search(r"^\s*///\s*\+optional\b", doc, re.M) is not None
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                head = attr.split(",")[0].strip()
                refs = [resolve(module, p, n) for p, n in TYPE_PATH.findall(ty) if n not in NOT_MESSAGES]
                refs = [r for r in refs if r]
                if head.startswith("btree_map"):
                    key_kind, value_kind = re.search(r'btree_map = "(\w+), (\w+)"', attr).groups()
                    if key_kind != "string":
                        sys.exit(f"{key}.{rust}: map key {key_kind} is not supported")
                    f = PbField(rust, tag, "map", False, map_value=value_kind)
                    if value_kind == "message":
                        f.type_ref = refs[-1]
                elif head.startswith("bytes"):
                    f = PbField(rust, tag, "bytes", "repeated" in attr)
                elif head == "message":
                    f = PbField(rust, tag, "message", "repeated" in attr, type_ref=refs[-1])
                elif head in SCALARS:
                    f = PbField(rust, tag, head, "repeated" in attr)
                else:
                    sys.exit(f"{key}.{rust}: prost kind {head!r} is not supported")
                f.optional_marker = optional_marker
                msg.fields.append(f)
            messages[key] = msg
        for r in re.finditer(
            r"impl crate::Resource for (\w+) \{\s*const API_VERSION: &'static str = \"([^\"]*)\";.*?"
            r"const KIND: &'static str = \"([^\"]*)\";",
            text,
            re.S,
        ):
            resources[".".join(module + [r.group(1)])] = (r.group(2), r.group(3))
    return messages, resources


@dataclass
class OaStruct:
    json: dict[str, str]  # normalized name -> JSON name
    required: set[str]  # JSON names


def parse_openapi(src: Path) -> dict[str, OaStruct]:
    structs: dict[str, OaStruct] = {}
    for path in sorted(src.rglob("*.rs")):
        text = path.read_text()
        m = re.search(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.S | re.M)
        if not m:
            continue
        module = list(path.parent.relative_to(src).parts)
        rust_types = dict(re.findall(r"^    pub (?:r#)?(\w+): (.*),$", m.group(2), re.M))
        json_of = {}
        for name, key in re.findall(r'"([^"]+)" => Field::Key_(\w+),', text):
            json_of[key] = name
        s = OaStruct({}, set())
        for rust, ty in rust_types.items():
            name = json_of.get(rust)
            if name is None:
                sys.exit(f"{path}: no JSON name for field {rust}")
            s.json[norm(name)] = name
            if not ty.startswith("Option<"):
                s.required.add(name)
        structs[".".join(module + [m.group(1)]).lower()] = s
    return structs


def norm(name: str) -> str:
    return name.replace("_", "").lower()


def parse_pointers(path: Path) -> dict[str, set[str]]:
    """`core/v1 PodSpec: Priority ...` -> {"api.core.v1.podspec": {"priority", ...}}."""
    out: dict[str, set[str]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, names = line.partition(":")
        package, _, go_type = head.strip().partition(" ")
        if not names.strip() or not go_type:
            sys.exit(f"{path}:{n}: expected `package Type: Field Field ...`")
        prefix = "apimachinery.pkg.apis.meta.v1" if package == "meta/v1" else "api." + package.replace("/", ".")
        out.setdefault(f"{prefix}.{go_type}".lower(), set()).update(norm(f) for f in names.split())
    return out


def const_name(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "api":
        parts = parts[1:]
    elif parts[:4] == ["apimachinery", "pkg", "apis", "meta"]:
        parts = ["meta"] + parts[4:]
    elif parts[0] == "apimachinery":
        parts = parts[2:]
    name = parts[-1]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()
    return "_".join(p.upper() for p in parts[:-1]) + "_" + snake


def main() -> None:
    pb_src = crate_src("k8s-pb", PB_VERSION)
    oa_src = crate_src("k8s-openapi", OPENAPI_VERSION) / OPENAPI_MODULE
    messages, resources = parse_pb(pb_src)
    openapi = parse_openapi(oa_src)
    pointers = parse_pointers(POINTERS)

    for key, api_version, kind in TOP_LEVEL:
        if key in resources and resources[key] != (api_version, kind):
            sys.exit(f"{key}: k8s-pb says {resources[key]}, TOP_LEVEL says {(api_version, kind)}")

    # Walk every message reachable from the top-level types.
    order: list[str] = []
    seen: set[str] = set()
    skipped: list[str] = []
    inline: set[tuple[str, str]] = set()
    rows: dict[str, list[str]] = {}
    used_pointers: set[tuple[str, str]] = set()  # (message key, normalized name), lower case

    def visit(key: str, oa: OaStruct | None = None) -> None:
        if key in seen or key in SPECIAL:
            return
        if key in UNSUPPORTED:
            sys.exit(f"{key} is reachable but the decoder has no JSON form for it")
        seen.add(key)
        msg = messages[key]
        oa = oa or openapi.get(key.lower())
        if oa is None:
            sys.exit(f"{key}: no k8s-openapi {OPENAPI_MODULE} struct of that name")
        order.append(key)
        lines = []
        for f in msg.fields:
            json = oa.json.get(norm(f.rust))
            is_inline = False
            if json is None:
                # An embedded Go struct (`json:",inline"`) is a nested message in protobuf.
                # Its fields have JSON names in the parent's struct, and it has no struct of its own.
                sub = messages.get(f.type_ref or "")
                if (
                    sub
                    and f.kind == "message"
                    and not f.repeated
                    and sum(norm(s.rust) in oa.json for s in sub.fields) >= len(sub.fields) // 2 + 1
                ):
                    is_inline = True
                    inline.add((key, f.rust))
                    visit(f.type_ref, None if f.type_ref.lower() in openapi else oa)
                else:
                    skipped.append(f"{key}.{f.rust} (tag {f.tag}): not in k8s-openapi {OPENAPI_MODULE}")
                    continue
            if f.type_ref:
                if f.type_ref not in messages:
                    sys.exit(f"{key}.{f.rust}: unknown message {f.type_ref}")
                if f.type_ref not in SPECIAL and not is_inline and openapi.get(f.type_ref.lower()) is None:
                    skipped.append(f"{key}.{f.rust} (tag {f.tag}): {f.type_ref} is not in k8s-openapi {OPENAPI_MODULE}")
                    continue
                visit(f.type_ref)
            if f.type_ref:
                kind = SPECIAL.get(f.type_ref) or f"Msg(&{const_name(f.type_ref)})"
            else:
                kind = SCALARS[f.map_value if f.kind == "map" else f.kind]
            # Required in OpenAPI = no `omitempty` in the Go json tag, unless the Go comment says
            # `+optional` (k8s-openapi also requires a few defaulted fields, like
            # LocalObjectReference.name, that Go omits when empty).
            required = json in oa.required and not f.optional_marker if json else False
            pointer = json is not None and norm(json) in pointers.get(key.lower(), set())
            if pointer:
                used_pointers.add((key.lower(), norm(json)))
            if is_inline:
                rule, json = "Inline", ""
            elif f.kind == "map":
                rule = "MapOrNull" if required else "Map"
            elif f.repeated:
                rule = "ListOrNull" if required else "List"
            elif pointer:
                rule = "PtrOrNull" if required else "Ptr"
            else:
                rule = "Always" if required else "OmitEmpty"
            lines.append(f'    F {{ tag: {f.tag}, json: "{json}", kind: {kind}, rule: {rule} }},')
        rows[key] = lines

    for key, _, _ in TOP_LEVEL:
        visit(key)

    for msg, names in sorted(pointers.items()):
        for name in sorted(names):
            if (msg, name) not in used_pointers:
                print(f"warning: {POINTERS.name}: {msg}.{name} is not a reachable field", file=sys.stderr)

    out = [
        "// @generated by `python3 control/apiserver/protobuf/generate.py` from the crates",
        f"// k8s-pb {PB_VERSION} (field numbers and kinds) and k8s-openapi {OPENAPI_VERSION} module",
        f"// {OPENAPI_MODULE} (JSON names, required fields), plus control/apiserver/protobuf/go_pointers.txt.",
        "// Do not edit by hand: change the script or go_pointers.txt and run it again.",
        "",
        "use super::Field as F;",
        "use super::Kind::*;",
        "use super::Rule::*;",
        "use super::{Message, TopLevel};",
        "",
        "/// The objects a request body may hold, by the envelope's apiVersion and kind.",
        "#[rustfmt::skip]",
        "pub static TOP_LEVEL: &[TopLevel] = &[",
    ]
    for key, api_version, kind in TOP_LEVEL:
        out.append(f'    TopLevel {{ api_version: "{api_version}", kind: "{kind}", message: &{const_name(key)} }},')
    out.append("];")
    names = {}
    for key in order:
        c = const_name(key)
        if c in names:
            sys.exit(f"{key} and {names[c]} both map to {c}")
        names[c] = key
        out += [
            "",
            "#[rustfmt::skip]",
            f'pub static {c}: Message = Message {{ name: "{proto_name(key)}", fields: &[',
            *rows[key],
            "] };",
        ]
    OUT.write_text("\n".join(out) + "\n")
    print(f"wrote {OUT.relative_to(HERE.parent.parent.parent)}: {len(order)} messages")
    for s in skipped:
        print(f"skipped {s}")
    for k, f in sorted(inline):
        print(f"inline {k}.{f}")


def proto_name(key: str) -> str:
    """The k8s-pb module path in protobuf package form (the Rust struct's spelling)."""
    parts = key.split(".")
    if parts[0] == "apiextensions_apiserver":
        parts[0] = "apiextensions-apiserver"
    return "k8s.io." + ".".join(parts)


if __name__ == "__main__":
    main()
