"""Test setup shared by every test module.

Gives JAX 8 fake CPU devices (for sharding tests) and a session-long compilation cache before
jax is imported; a `shared_data` fixture that points at `../shared/data` or skips the test with
the reason when that folder is absent (as it is on a user's machine), and `stories`, the real
stories260K checkpoint in it.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

# A persistent compilation cache for this session only (the subprocesses of multi-host tests
# inherit it): many tests train the same tiny models through fresh jitted closures, and XLA
# compiles each identical step again without it (a third of test_loop's time). It starts empty,
# so no result depends on an earlier session, and is removed at the end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="lima_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


@pytest.fixture(scope="session")
def stories(shared_data) -> pathlib.Path:
    """The real stories260K checkpoint in Hugging Face format; skips the test when it is absent."""
    path = shared_data / "checkpoints" / "stories260K-hf"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"real checkpoint not present: {path}")
    return path
