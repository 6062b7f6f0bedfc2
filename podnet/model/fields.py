"""Field checks shared by the resources: each raises ValidationError naming the field."""

import ipaddress
import re

from podnet.model.errors import ValidationError

# RFC 1123 subdomain, as Kubernetes object names are.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_MAX = 15  # IFNAMSIZ - 1


def name(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty string")
    if len(value) > 253 or not _NAME.match(value):
        raise ValidationError(
            field, f"{value!r} is not a valid name (lower-case letters, digits, '-' and '.', at most 253)"
        )
    return value


def strict_network(field: str, value) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValidationError(field, "must be a CIDR string such as 10.244.0.0/16")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValidationError(field, f"{value!r} is not a CIDR ({e})") from None
        raise ValidationError(
            field, f"{value!r} has host bits set; did you mean {loose}?"
        ) from None


def ip_address(field: str, value) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ValidationError(field, f"{value!r} is not an IP address") from None


def interface(field: str, value) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with its prefix, e.g. 172.31.0.2/24."""
    if not isinstance(value, str) or "/" not in value:
        raise ValidationError(field, f"{value!r} must be an address with its prefix, e.g. 172.31.0.2/24")
    try:
        return ipaddress.ip_interface(value)
    except ValueError as e:
        raise ValidationError(field, f"{value!r} is not an address/prefix ({e})") from None


def mac(field: str, value) -> str:
    if not isinstance(value, str) or not _MAC.match(value.lower()):
        raise ValidationError(field, f"{value!r} is not a MAC address like 66:1e:13:c0:bc:a9")
    return value.lower()


def ifname(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty interface name")
    if len(value) > _IFNAME_MAX or "/" in value or any(c.isspace() for c in value) or value in (".", ".."):
        raise ValidationError(field, f"{value!r} is not a valid interface name (at most 15 characters, no '/' or spaces)")
    return value


def boolean(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, f"must be true or false, not {value!r}")
    return value


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def labels(field: str, value) -> dict:
    """Kubernetes label syntax: keys `[prefix/]name` (prefix a DNS subdomain of <= 253 characters,
    name <= 63 characters of letters, digits, `-_.`, starting and ending alphanumeric); values empty
    or like a name. Selectors compare these strings, so anything else could never be matched."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValidationError(field, "must be a map of strings to strings")
    for key, val in value.items():
        prefix, slash, name = key.rpartition("/")
        if not _LABEL_NAME.fullmatch(name) or (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))):
            raise ValidationError(f"{field}.{key}", "is not a valid label key ([prefix/]name: name up to 63 letters, "
                                                    "digits, '-', '_' or '.', starting and ending alphanumeric)")
        if val and not _LABEL_NAME.fullmatch(val):
            raise ValidationError(f"{field}.{key}", f"{val!r} is not a valid label value (up to 63 letters, digits, "
                                                    "'-', '_' or '.', starting and ending alphanumeric)")
    return dict(value)
