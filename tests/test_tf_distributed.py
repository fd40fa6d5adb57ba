"""Keras training under tf.distribute equals one device on the same global batch.

``MirroredStrategy`` over two logical CPU devices of one process, and ``MultiWorkerMirroredStrategy``
over two worker processes that find each other through ``TF_CONFIG`` on 127.0.0.1 (as two hosts
would; the launch docs/scaling.md shows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from multinode import PYTHON, env, run_on_ports, run_together, shell, tf_config
from safetensors.numpy import load_file
from tolerances import DIST_PARAM_ATOL

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "tf_mirrored_worker.py"
FIXTURE = FIXTURES / "bert2gpt2" / "pt"
TIMEOUT = 240  # seconds for one job; it takes ~10 s, ~40 s with both cores busy
DOC_PORTS = [12345, 12346]  # the ports docs/scaling.md shows


def _run(mode: str, out: Path, workers: int = 1) -> dict[str, np.ndarray]:
    cmd = [PYTHON, str(WORKER), mode, str(FIXTURE), str(out)]
    if workers == 1:
        run_together([cmd], [env()], out.parent / f"{out.name}-logs", timeout=TIMEOUT)
    else:

        def launch(ports):  # every worker's port is in every TF_CONFIG: launched again if one was taken
            return [cmd] * workers, [env(TF_CONFIG=tf_config(ports, i)) for i in range(workers)]

        run_on_ports(launch, workers, out.parent / f"{out.name}-logs", timeout=TIMEOUT)
    return load_file(out / "model.safetensors")  # the canonical checkpoint (written by worker 0)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, np.ndarray]:
    return _run("single", tmp_path_factory.mktemp("tf") / "single")


@pytest.mark.parametrize("mode, workers", [("mirrored", 1), ("multiworker", 2)], ids=["mirrored", "2workers"])
def test_replicas_equal_one_device(mode, workers, single, tmp_path):
    replicated = _run(mode, tmp_path / mode, workers)
    start = load_file(FIXTURE / "model.safetensors")
    assert replicated.keys() == single.keys()
    worst = max(float(np.abs(single[k] - replicated[k]).max()) for k in single)
    moved = max(float(np.abs(single[k] - start[k]).max()) for k in single)
    assert worst <= DIST_PARAM_ATOL, f"{mode}: max parameter difference {worst:.2e}"
    assert moved > 1e-3  # three SGD steps did train (a 2x gradient sum would differ by about this much)


def test_docs_show_the_tested_cluster():
    """docs/scaling.md gives the TF_CONFIG of these tests (its ports in place of ours)."""
    page = (ROOT / "docs" / "scaling.md").read_text()
    for i in range(2):
        line = shell({"TF_CONFIG": tf_config(DOC_PORTS, i)}, ["python", "train_tf.py"])
        assert line in page, f"docs/scaling.md does not show `{line}`"
