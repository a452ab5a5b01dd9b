"""The Colab notebooks run top to bottom on tiny settings, and are stored without outputs.

Each notebook has one cell tagged `parameters`; the test replaces it with tiny settings
(the real stories260K checkpoint and LIMA data from ../shared/data, skipping when absent)
and executes the notebook in a fresh kernel with nbclient. The assertions live in the
notebooks' own cells, so a failing cell fails the test with its traceback.
"""

from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("lima_quickstart", "superficial_alignment")


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _with_parameters(nb, source: str):
    """The notebook with its `parameters` cell's source replaced by `source`."""
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    tagged[0].source = source
    return nb


def _kernel_env() -> dict:
    """The kernel runs this checkout's lima_jax on one CPU device: the 8 fake devices the
    other tests use would only slow a notebook down."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["TQDM_MININTERVAL"] = "5"  # fewer progress-bar messages through the kernel
    return env


def _execute(nb, workdir: pathlib.Path, timeout: int = 600):
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=_kernel_env())
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"a notebook cell failed:\n{error}")
    return nb


def _output_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name}: no code cells"
    for index, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {index} has stored outputs; clear them"
        assert cell.execution_count is None, f"{name}: code cell {index} has an execution count"
    install = code[0].source
    assert "google.colab" in install and "pip install" in install, f"{name}: no guarded install cell"
    assert f"notebooks/{name}.ipynb" in nb.cells[0].source, f"{name}: no Colab badge for itself"


def test_quickstart_runs(tmp_path, shared_data):
    stories = shared_data / "checkpoints" / "stories260K-hf"
    lima = shared_data / "lima"
    if not (stories / "model.safetensors").is_file() or not (lima / "train.jsonl").is_file():
        pytest.skip(f"stories260K or LIMA data not present under {shared_data}")
    params = f"""
MODEL = {str(stories)!r}
TOKENIZER = ""
LIMA_DIR = {str(lima)!r}
DATA = {str(lima / "train.jsonl")!r}
TEST_PROMPTS = ""
TRAIN_EXAMPLES = 48
NUM_PROMPTS = 3
ANSWER_TOKENS = 48
EPOCHS = 2
MAX_STEPS = 0
OVERRIDES = {{"data.max_len": 256}}
WORKDIR = {str(tmp_path / "work")!r}
"""
    nb = _execute(_with_parameters(_read("lima_quickstart"), params), tmp_path)
    text = _output_text(nb)
    assert "data report" in text and "export reloads with identical logits" in text


def test_superficial_alignment_runs(tmp_path, shared_data):
    stories = shared_data / "checkpoints" / "stories260K-hf"
    if not (stories / "model.safetensors").is_file():
        pytest.skip(f"stories260K not present: {stories}")
    params = f"""
MODEL = {str(stories)!r}
SIZES = [16]
HELD_OUT = 16
EPOCHS = 15
BATCH = 4
LEARNING_RATE = 1e-2
MAX_LEN = 384
STORY_TOKENS = 340
ANSWER_TOKENS = 256
SEED = 0
WORKDIR = {str(tmp_path / "work")!r}
"""
    nb = _execute(_with_parameters(_read("superficial_alignment"), params), tmp_path)
    assert "| examples | steps | EOT stop |" in _output_text(nb)
