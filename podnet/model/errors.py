from podnet.errors import PodnetError


class ValidationError(PodnetError):
    """A resource field holds a value podnet cannot accept. `field` names it (e.g. spec.cidr)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
