"""Shared test set-up: where the real fixtures live (skip cleanly when they are absent)."""
import os
import pathlib

import pytest

FIXTURES = pathlib.Path(
    os.environ.get("RLAE_FIXTURES", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures")
)


def fixture_path(*parts: str) -> pathlib.Path:
    """Path under the shared fixtures folder; skips the calling test when it does not exist."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} is absent (set RLAE_FIXTURES to the shared fixtures folder)")
    return path
