"""Test setup shared by every test module.

Gives JAX 8 fake CPU devices (for sharding tests) before jax is imported, and a
`shared_data` fixture that points at `../shared/data` or skips the test with the
reason when that folder is absent (as it is on a user's machine).
"""

import os
import pathlib

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("LIMA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path to ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present: {SHARED_DATA} does not exist")
    return SHARED_DATA
