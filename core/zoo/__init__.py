"""The demo zoo: a synthetic multilingual, multi-domain world, a tiny Llama base, its LoRAs.

The built artifacts ship in ``artifacts/`` so demos and tests need no build; rebuild them with
``qaflora.zoo.build.build_zoo`` (see benchmarks/ZOO.md for what is in the zoo and how good it is).
"""

from pathlib import Path


def shipped_catalog_path() -> Path:
    """``catalog.yaml`` of the zoo shipped with the package."""
    return Path(__file__).parent / "artifacts" / "catalog.yaml"


def catalog_or_shipped(catalog: str | Path | None) -> Path:
    """``catalog`` if given, else the shipped demo zoo's; a clear error when neither exists.

    Every entry point (CLI, examples) that defaults to the demo zoo goes through here, so
    the message a user sees when the zoo is missing is the same everywhere.
    """
    path = Path(catalog) if catalog else shipped_catalog_path()
    if not path.is_file():
        hint = "" if catalog else " (the demo zoo is not installed: run `qaflora zoo build`)"
        raise FileNotFoundError(f"no adapter catalog at {path}{hint}; pass --catalog (and --base)")
    return path
