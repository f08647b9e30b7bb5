"""kwire's tests. `UPSTREAM`: the published upstream manifests beside the checkout (../shared/upstream), as the
workplace lays them next to every clone (CI included)."""

from pathlib import Path

UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "upstream"
