"""report.html: self-contained (inline PNGs, no external resources), with every plot, parsed with html.parser."""

import base64
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from helpers import liu_split
from scarches_api.report_html import plot_embedding_png, render_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """A result table shaped like the mapping's, from real cells: 2-D coordinates from two marker genes."""
    reference, query = liu_split(100)
    rng = np.random.default_rng(0)
    rows = []
    for kind, adata in (("reference", reference), ("query", query)):
        genes = adata[:, (adata.var["feature_types"] == "Gene Expression").to_numpy()].copy()  # CD3E is also a protein
        genes.var_names_make_unique()
        xy = np.log1p(genes[:, ["CD3E", "LYZ"]].X.toarray()) + rng.normal(0, 0.1, (adata.n_obs, 2))
        rows.append(pd.DataFrame({
            "cell_id": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1], "batch": adata.obs["Batch"].astype(str),
            "type": kind, "cell_type": adata.obs["mergedcelltype"].astype(str),
            "predicted": "yes" if kind == "query" else "no",
            "uncertainty": rng.random(adata.n_obs) if kind == "query" else 0.0,
        }))
    return pd.concat(rows, ignore_index=True)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def test_report_is_self_contained_with_all_plots(table):
    report = {
        "title": "liu B3 onto B1+B2",
        "cells": {"reference": 400, "query": 200},
        "accuracy": 0.8731,
        "genes": {"matched": 1000, "routes": {"identical": 1000, "ensembl_to_symbol": 0}},
        "issues": [{"level": "info", "message": "<b>escaped</b>"}],
        "renamed": ["B3"],
    }
    page = render_report(table, report)
    parser = _Collect()
    parser.feed(page)
    assert parser.title == "liu B3 onto B1+B2"
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 4  # by type, by predicted label, by uncertainty, per-type bars
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    for tag, attrs in parser.tags:  # nothing is fetched from elsewhere
        assert tag not in ("script", "link", "iframe")
        for name in ("src", "href"):
            assert not str(attrs.get(name, "")).startswith(("http:", "https:", "//"))
    assert "http://" not in page and "https://" not in page
    assert "<style>" in page
    assert sum(tag == "table" for tag, _ in parser.tags) >= 4  # key figures, nested genes and routes, issue records
    assert "ensembl_to_symbol" in page and "0.8731" in page
    assert "&lt;b&gt;escaped&lt;/b&gt;" in page and "<b>escaped" not in page


def test_many_cells_render_quickly():
    rng = np.random.default_rng(1)
    n = 30_000
    big = pd.DataFrame({
        "cell_id": np.arange(n).astype(str), "x": rng.normal(size=n), "y": rng.normal(size=n), "batch": "b",
        "type": np.where(rng.random(n) < 0.5, "reference", "query"),
        "cell_type": rng.choice([f"type {i}" for i in range(40)], n), "predicted": "yes", "uncertainty": rng.random(n),
    })
    import time

    start = time.perf_counter()
    page = render_report(big, {})
    assert time.perf_counter() - start < 15  # about 1.5 s alone; generous for a shared 2-core machine
    assert page.count("data:image/png;base64,") == 4


def test_plot_embedding_png(table, tmp_path):
    for color_by in ("type", "cell_type", "uncertainty"):
        path = plot_embedding_png(table, tmp_path / f"{color_by}.png", color_by=color_by)
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
