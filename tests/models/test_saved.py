"""Pretrained model files come from users: a model.pt whose pickle would run code is refused before it can."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scarches_api.errors import ModelLoadError
from scarches_api.models.saved import inspect_saved_model


class _RunsCode:
    """Unpickling this runs a shell command (what a hostile model.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _saved(folder: Path, attr_dict: dict) -> Path:
    folder.mkdir()
    torch.save({"attr_dict": attr_dict, "model_state_dict": {"w": torch.zeros(2)}, "var_names": np.array(["A", "B"])},
               folder / "model.pt")
    return folder


@pytest.mark.fault("pretrained model.pt whose pickle runs a shell command")
def test_a_model_file_that_would_run_code_is_refused_unrun(tmp_path: Path, record_property) -> None:
    marker = tmp_path / "code-ran"
    folder = _saved(tmp_path / "hostile", {"registry_": {"model_name": "SCVI"}, "payload": _RunsCode(marker)})
    with pytest.raises(ModelLoadError) as refused:
        inspect_saved_model(folder)
    record_property("observed", f"{type(refused.value).__name__} ({refused.value.status_code}): "
                                f"{refused.value.message[:150]}; code ran: {marker.exists()}")
    assert not marker.exists()
    assert "references code" in refused.value.message and "system" in refused.value.message


def test_data_only_model_files_load(tmp_path: Path) -> None:
    # What scvi-tools writes: numpy arrays, pandas frames, a defaultdict (torch's own weights_only loader can't).
    import collections

    import pandas as pd

    attr = {
        "registry_": {"model_name": "SCANVI", "scvi_version": "1.4.2"},
        "n_labels": collections.defaultdict(int, {"a": 1}),
        "frame": pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index(["c1", "c2"])),
        "mapping": np.array(["B", "T"], dtype=object),
    }
    saved = inspect_saved_model(_saved(tmp_path / "ok", attr))
    assert (saved.class_name, saved.scvi_version, list(saved.var_names)) == ("SCANVI", "1.4.2", ["A", "B"])
