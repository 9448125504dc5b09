"""The CLI as users run it: a real subprocess on real (subsampled) data."""

import json
import subprocess
import sys

import pytest

from helpers import FAST_EPOCHS, REPO, liu_files
from scarches_api.config import QueryConfig
from scarches_api.io.table import read_table


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scarches_api", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return liu_files(tmp_path_factory.mktemp("cli"), cells_per_batch=100)


def test_map_writes_the_table_and_the_model(files, tmp_path):
    ref, query = files
    overrides = [f"{k}={v}" for k, v in FAST_EPOCHS.items()]
    done = run_cli(
        "map", "--model", "scANVI", "-r", str(ref), "-q", str(query), "-o", str(tmp_path / "out.csv"),
        "--model-out", str(tmp_path / "model"), "atlas=liu_demo", "n_neighbors=5", *overrides,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["output"].endswith("out.csv") and report["summary"]["label_method"] == "blend+smoothed"
    assert "epoch 2/2" in done.stderr  # the progress display
    table = read_table(tmp_path / "out.csv")
    assert len(table) == 300 and {"x", "y", "cell_type", "uncertainty"} <= set(table.columns)
    assert (tmp_path / "model" / "model.pt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "scGPT"], "key 'model'"),
        (["modle=scVI"], "unknown key 'modle'"),
        (["n_layers=two"], "key 'n_layers'"),
        (["condition_key=donor"], "no obs column 'donor' (config key 'condition_key')"),
    ],
)
@pytest.mark.fault("CLI map with a bad option: unknown model, misspelt key, wrong type, missing obs column")
def test_bad_input_exits_2_with_a_message_naming_it(files, tmp_path, args, message, record_property):
    ref, query = files
    done = run_cli("map", "-r", str(ref), "-q", str(query), "-o", str(tmp_path / "out.tsv"), *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.tsv").exists()
    line = next((line for line in done.stderr.splitlines() if message in line), done.stderr.strip())
    record_property("observed", f"exit {done.returncode}: {line.strip()[:160]}")


def test_every_config_key_is_listed_by_the_cli_and_documented_in_the_readme():
    listed = run_cli("config").stdout
    readme = (REPO / "README.md").read_text()
    for name, field in QueryConfig.model_fields.items():
        key = field.alias or name
        assert key in listed
        assert f"`{key}`" in readme, f"README lacks config key {key}"


@pytest.mark.fault("CLI check on a log-normalised query")
def test_check_answers_without_training_and_exits_2_on_log_normalised_data(files, tmp_path, record_property):
    import anndata as ad

    ref, query = files
    ok = run_cli("check", "-q", str(query), "-r", str(ref), "atlas=liu_demo")
    assert ok.returncode == 0 and json.loads(ok.stdout)["verdict"] == "ok"
    logged = ad.read_h5ad(query)
    logged.X = logged.X.log1p()
    logged.write_h5ad(tmp_path / "logged.h5ad")
    bad = run_cli("check", "-q", str(tmp_path / "logged.h5ad"), "-r", str(ref), "atlas=liu_demo")
    report = json.loads(bad.stdout)
    assert bad.returncode == 2 and report["verdict"] == "error"
    assert any("log-normalised" in reason and "raw integer UMI counts" in reason for reason in report["reasons"])
    reason = next(reason for reason in report["reasons"] if "log-normalised" in reason)
    record_property("observed", f"exit {bad.returncode}, verdict {report['verdict']}: {reason[:140]}")
