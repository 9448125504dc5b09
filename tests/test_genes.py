"""Gene-ID detection and harmonisation on liu_demo's real gene symbols and their Ensembl ids from the packaged table."""

import gzip
import hashlib
import json
import time
from importlib import resources

import pytest

from helpers import liu_split
from scarches_api.genes import (
    ROUTES,
    detect_id_type,
    gene_table,
    harmonise,
    strip_version,
    table_source,
    to_ensembl,
)


@pytest.fixture(scope="module")
def liu_genes() -> list[str]:
    reference, _ = liu_split(20)
    genes = reference.var_names[reference.var["feature_types"] != "Antibody Capture"]
    return [str(g) for g in genes]


def test_table_ships_with_its_source_and_version():
    data = resources.files("scarches_api.genes") / "data"
    source = json.loads((data / "SOURCE.json").read_text())
    raw = (data / "human_genes.tsv.gz").read_bytes()
    assert source["package"] == "r-bioc-org.hs.eg.db" and source["version"]
    assert source["file_sha256"] == hashlib.sha256(raw).hexdigest()
    rows = gzip.decompress(raw).decode().splitlines()
    assert rows[0].split("\t") == source["columns"]
    assert len(rows) - 1 == source["rows"] > 30_000
    summary = table_source()
    assert summary["package"] == "r-bioc-org.hs.eg.db" and summary["version"] == source["version"]
    assert summary["rows"] == source["rows"]


def test_detects_symbols_and_ensembl_ids(liu_genes):
    symbols = detect_id_type(liu_genes)
    assert (symbols.kind, symbols.species) == ("symbol", "human") and symbols.recognised > 0.95
    ensembl = detect_id_type(to_ensembl(liu_genes))
    assert (ensembl.kind, ensembl.species) == ("ensembl", "human") and ensembl.recognised > 0.95
    versioned = detect_id_type(to_ensembl(liu_genes, version=7))
    assert versioned.kind == "ensembl_versioned" and versioned.species == "human"
    half = liu_genes[:500] + to_ensembl(liu_genes[500:])
    assert detect_id_type(half).kind == "mixed"
    assert detect_id_type(["Cd4", "Actb", "Gapdh", "Ptprc", "Cd8a"]).species == "mouse"
    assert detect_id_type(["ENSMUSG00000023274.5", "ENSMUSG00000029580.9"]).species == "mouse"
    assert detect_id_type([f"gene_{i}" for i in range(100)]).kind == "unknown"
    assert detect_id_type([]).kind == "unknown"


def test_strip_version():
    assert strip_version("ENSG00000141510.17") == "ENSG00000141510"
    assert strip_version("ENSG00000141510") == "ENSG00000141510"
    assert strip_version("ENSG00000002586.20_PAR_Y") == "ENSG00000002586_PAR_Y"
    assert strip_version("TP53") is None


def test_versioned_ensembl_query_maps_back_onto_symbol_reference(liu_genes):
    query = to_ensembl(liu_genes, version=3)
    result = harmonise(query, liu_genes)
    back = sum(result.mapping.get(q) == s for q, s in zip(query, liu_genes))
    assert back >= 0.95 * len(liu_genes)
    assert sum(result.routes.values()) == result.matched
    assert set(result.routes) == set(ROUTES)
    assert result.routes["ensembl_to_symbol"] > 850
    assert result.routes["ensembl_to_alias"] > 20  # retired symbols in liu_demo such as IGJ (now JCHAIN)
    assert result.mapping[query[liu_genes.index("IGJ")]] == "IGJ"
    assert result.unmatched_reference == len(liu_genes) - result.matched
    assert result.table["package"] == "r-bioc-org.hs.eg.db"
    assert result.to_dict()["share_of_reference"] == pytest.approx(result.matched / len(liu_genes), abs=1e-4)


def test_symbol_query_maps_onto_ensembl_reference(liu_genes):
    reference = to_ensembl(liu_genes)
    result = harmonise(liu_genes, reference)
    back = sum(result.mapping.get(s) == e for s, e in zip(liu_genes, reference))
    assert back >= 0.95 * len(liu_genes)
    assert result.routes["symbol_to_ensembl"] > 850 and result.routes["alias_to_ensembl"] > 20


def test_version_and_case_routes():
    result = harmonise(["ENSG00000141510.17", "ENSG00000012048", "cd3e"], ["ENSG00000141510", "ENSG00000012048.5", "CD3E"])
    assert result.mapping == {
        "ENSG00000141510.17": "ENSG00000141510",
        "ENSG00000012048": "ENSG00000012048.5",
        "cd3e": "CD3E",
    }
    assert result.routes["version_stripped"] == 2 and result.routes["case_insensitive"] == 1


def test_renamed_symbols_match():
    result = harmonise(["IGJ", "IL8"], ["JCHAIN", "CXCL8"])
    assert result.mapping == {"IGJ": "JCHAIN", "IL8": "CXCL8"} and result.routes["symbol_renamed"] == 2


def test_one_to_one_keeps_the_most_direct_match():
    # CXCL8's Ensembl id and its retired symbol IL8 both reach the reference's CXCL8; the identical name wins.
    result = harmonise(["ENSG00000169429", "IL8", "CXCL8"], ["CXCL8"])
    assert result.mapping == {"CXCL8": "CXCL8"}
    assert result.duplicates == 2 and result.matched == 1
    assert harmonise(["CD4", "CD4"], ["CD4"]).duplicates == 1


def test_aliases_that_are_official_symbols_are_never_used():
    table = gene_table()
    assert not set(table.alias_to_ensembl) & set(table.symbol_to_ensembl)


def test_large_gene_lists_are_fast():
    table = gene_table()
    ensembl = list(table.ensembl_to_symbols)[:30_000]
    symbols = [table.ensembl_to_symbols[e][0] for e in ensembl]
    start = time.perf_counter()
    result = harmonise([f"{e}.2" for e in ensembl], symbols)
    detect_id_type(symbols)
    assert time.perf_counter() - start < 2.0  # about 0.3 s; generous for a shared 2-core machine
    assert result.matched > 28_000
