import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import liu_split
from scarches_api.errors import InputDataError
from scarches_api.io.h5ad import is_counts, read_h5ad, require_obs_key, use_counts
from scarches_api.io.table import read_table, separator_for, write_table


@pytest.mark.fault("unreadable .h5ad (a CSV under an .h5ad name)")
def test_unreadable_file_is_named(tmp_path, record_property):
    bad = tmp_path / "query.h5ad"
    bad.write_bytes(b"this is a CSV, not HDF5\n1,2,3\n")
    with pytest.raises(InputDataError, match="query data: query.h5ad is not a readable .h5ad file") as err:
        read_h5ad(bad, role="query")
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:160]}")


@pytest.mark.fault("truncated .h5ad (cut in half)")
def test_truncated_file_is_an_input_error(tmp_path, record_property):
    reference, _ = liu_split(50)
    path = tmp_path / "ref.h5ad"
    reference.write_h5ad(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputDataError, match="not a readable .h5ad") as err:
        read_h5ad(path, role="reference")
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:160]}")


@pytest.mark.fault("missing .h5ad file")
def test_missing_file_is_named(tmp_path, record_property):
    with pytest.raises(InputDataError, match="does not exist") as err:
        read_h5ad(tmp_path / "nope.h5ad", role="reference")
    record_property("observed", f"{type(err.value).__name__}: {str(err.value).replace(f'{tmp_path}/', '')[:160]}")


@pytest.mark.fault("log-normalised data given instead of raw counts")
def test_real_counts_are_recognised_and_log_normalised_data_refused(record_property):
    reference, _ = liu_split(50)
    assert is_counts(reference.X)
    logged = reference.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray() / logged.X.toarray().sum(1, keepdims=True) * 1e4))
    with pytest.raises(InputDataError, match="does not hold raw counts.*log-transformed") as err:
        use_counts(logged, role="query")
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:160]}")


def test_counts_are_taken_from_a_counts_layer_or_raw():
    reference, _ = liu_split(50)
    counts = reference.X.copy()
    normalised = sp.csr_matrix(np.log1p(counts.toarray()))
    layered = ad.AnnData(X=normalised, layers={"counts": counts}, obs=reference.obs, var=reference.var)
    assert use_counts(layered, role="query") == "layers['counts']"
    assert (layered.X != counts).nnz == 0
    with_raw = ad.AnnData(X=normalised, obs=reference.obs, var=reference.var)
    with_raw.raw = ad.AnnData(X=counts, var=reference.var)
    assert use_counts(with_raw, role="query") == "raw.X"


@pytest.mark.fault("configured obs key missing from the data")
def test_missing_obs_key_names_the_config_key_and_the_columns(record_property):
    reference, _ = liu_split(20)
    with pytest.raises(InputDataError, match="no obs column 'study' \\(config key 'condition_key'\\).*Batch") as err:
        require_obs_key(reference, "study", role="reference", config_key="condition_key")
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:160]}")


def test_table_separator_follows_the_extension(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"cell_id": ["a", "b"], "x": [1.0, 2.0]})
    assert separator_for("out/result.CSV") == "," and separator_for("out/result.tsv") == "\t"
    written = write_table(table, tmp_path / "r.csv")
    assert written.read_text().splitlines()[0] == "cell_id,x"
    assert read_table(written).equals(table)
    assert list(tmp_path.iterdir()) == [written]  # no temporary file left beside it
