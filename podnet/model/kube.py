"""The Kubernetes objects policy reads: v1 Namespace (its labels) and v1 Pod (its labels and named ports).

podnet keeps only what Calico's kube-controllers would sync for policy: labels, and for pods the
containers' named ports. A Pod is matched to its workload endpoint by namespace and name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from podnet.model import fields
from podnet.model.errors import ValidationError

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
# A port name: IANA_SVC_NAME as Kubernetes checks it (at most 15 lower-case letters, digits and '-').
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def label_map(field_name: str, value) -> dict[str, str]:
    """Kubernetes labels: keys with an optional DNS prefix, values of at most 63 safe characters."""
    labels = fields.labels(field_name, value)
    for k, v in labels.items():
        if not _LABEL_KEY.match(k) or len(k) > 317:
            raise ValidationError(f"{field_name}.{k}", "is not a valid label key")
        if not _LABEL_VALUE.match(v):
            raise ValidationError(f"{field_name}.{k}", f"{v!r} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ .)")
    return labels


def port_name(field_name: str, value) -> str:
    if not isinstance(value, str) or not _PORT_NAME.match(value):
        raise ValidationError(field_name, f"{value!r} is not a port name (at most 15 of a-z 0-9 '-', with a letter)")
    return value


def _meta(doc: dict, namespaced: bool) -> tuple[str, str, dict]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ValidationError("metadata", "is required")
    name = fields.name("metadata.name", meta.get("name"))
    namespace = ""
    if namespaced:
        namespace = fields.name("metadata.namespace", meta.get("namespace") or "default")
    return name, namespace, label_map("metadata.labels", meta.get("labels"))


def _expect(doc, kind: str, api_version: str = "v1") -> None:
    if not isinstance(doc, dict):
        raise ValidationError("(document)", "must be a mapping with apiVersion, kind and metadata")
    if doc.get("apiVersion") != api_version:
        raise ValidationError("apiVersion", f"must be {api_version}, not {doc.get('apiVersion')!r}")
    if doc.get("kind") != kind:
        raise ValidationError("kind", f"must be {kind}, not {doc.get('kind')!r}")


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        fields.name("metadata.name", self.name)
        labels = label_map("metadata.labels", self.labels)
        labels[NAMESPACE_NAME_LABEL] = self.name  # every namespace has it, as the API server sets it
        object.__setattr__(self, "labels", labels)

    def to_manifest(self) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.name, "labels": dict(self.labels)}}

    @classmethod
    def from_manifest(cls, doc: dict) -> Namespace:
        _expect(doc, "Namespace")
        name, _, labels = _meta(doc, namespaced=False)
        return cls(name, labels)


@dataclass(frozen=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict = field(default_factory=dict, hash=False)
    ports: tuple[ContainerPort, ...] = ()

    def __post_init__(self):
        fields.name("metadata.namespace", self.namespace)
        fields.name("metadata.name", self.name)
        object.__setattr__(self, "labels", label_map("metadata.labels", self.labels))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_manifest(self) -> dict:
        ports = [{"name": p.name, "containerPort": p.port, "protocol": p.protocol} for p in self.ports]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
                "spec": {"containers": [{"name": "main", "ports": ports}] if ports else []}}

    @classmethod
    def from_manifest(cls, doc: dict) -> Pod:
        _expect(doc, "Pod")
        name, namespace, labels = _meta(doc, namespaced=True)
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise ValidationError("spec", "must be a mapping")
        ports = []
        for c, container in enumerate(spec.get("containers") or []):
            if not isinstance(container, dict):
                raise ValidationError(f"spec.containers[{c}]", "must be a mapping")
            for i, p in enumerate(container.get("ports") or []):
                where = f"spec.containers[{c}].ports[{i}]"
                if not isinstance(p, dict):
                    raise ValidationError(where, "must be a mapping")
                number = p.get("containerPort")
                if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                    raise ValidationError(f"{where}.containerPort", f"{number!r} is not a port number 1-65535")
                protocol = p.get("protocol", "TCP")
                if protocol not in PROTOCOLS:
                    raise ValidationError(f"{where}.protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
                if "name" in p:  # only named ports matter to policy
                    ports.append(ContainerPort(port_name(f"{where}.name", p["name"]), number, protocol))
        return cls(namespace, name, labels, tuple(ports))


def parse_port_flag(text: str) -> ContainerPort:
    """NAME=NUMBER/PROTOCOL, as `podnet lab pod add --port` takes it (protocol defaults to TCP)."""
    name, sep, rest = text.partition("=")
    number, _, protocol = rest.partition("/")
    if not sep or not number.isdigit():
        raise ValidationError("--port", f"{text!r} is not NAME=NUMBER/PROTOCOL, e.g. http=80/TCP")
    protocol = (protocol or "TCP").upper()
    if protocol not in PROTOCOLS or not 1 <= int(number) <= 65535:
        raise ValidationError("--port", f"{text!r}: port 1-65535 and protocol TCP, UDP or SCTP")
    return ContainerPort(port_name("--port", name), int(number), protocol)
