"""Other libraries' model folders, to and from unidm runs: :mod:`unidm.interop.diffusers` (local folders only)."""

from .diffusers import (
    DiffusersFolder,
    export_diffusers,
    import_diffusers,
    load_diffusers,
    read_diffusers,
)

__all__ = ["DiffusersFolder", "read_diffusers", "load_diffusers", "import_diffusers", "export_diffusers"]
