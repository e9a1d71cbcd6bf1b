"""The demo zoo: a synthetic multilingual, multi-domain world, a tiny Llama base, its LoRAs.

The built artifacts ship in ``artifacts/`` so demos and tests need no build; rebuild them with
``qaflora.zoo.build.build_zoo`` (see benchmarks/ZOO.md for what is in the zoo and how good it is).
"""

from pathlib import Path


def shipped_catalog_path() -> Path:
    """``catalog.yaml`` of the zoo shipped with the package."""
    return Path(__file__).parent / "artifacts" / "catalog.yaml"
