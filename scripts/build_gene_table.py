#!/usr/bin/env python3
"""Build the packaged human gene table (Ensembl gene id <-> symbol <-> Entrez id, with aliases).

Source: Debian's ``r-bioc-org.hs.eg.db`` (Bioconductor's org.Hs.eg.db; NCBI Entrez Gene with its Ensembl cross
references). The .deb is fetched with the system's package client (``apt-get download``), never by the package at
run time; the result is written to ``src/scarches_api/genes/data/human_genes.tsv.gz`` with ``SOURCE.json`` beside it.

    python scripts/build_gene_table.py                 # apt-get download into a temp dir
    python scripts/build_gene_table.py --deb FILE.deb  # a .deb fetched before
    python scripts/build_gene_table.py --sqlite org.Hs.eg.sqlite --version 3.16.0-1

Only genes with an Ensembl id are kept (the others can't take part in Ensembl <-> symbol routes); aliases are kept
because real data sets use retired symbols (IGJ for JCHAIN, MT-CO1 for NCBI's COX1) that only aliases connect.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import sqlite3
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "r-bioc-org.hs.eg.db"
SQLITE_MEMBER = "org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "scarches_api" / "genes" / "data"
COLUMNS = ("ensembl_id", "symbol", "entrez_id", "aliases")
# Metadata rows of the sqlite worth recording: where and when NCBI/Ensembl data were taken.
METADATA_KEYS = ("ORGANISM", "TAXID", "EGSOURCENAME", "EGSOURCEDATE", "EGSOURCEURL", "ENSOURCEDATE", "DBSCHEMA")


def download_deb(dest: Path) -> Path:
    """Fetch the .deb with apt-get (no root needed for ``download``)."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=dest, check=True)
    return next(dest.glob(f"{PACKAGE}_*.deb"))


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True).stdout.strip()


def extract_sqlite(deb: Path, dest: Path) -> Path:
    """Stream the data tarball out of the .deb and keep only the sqlite file (the rest is R code)."""
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(SQLITE_MEMBER))
        target = dest / "org.Hs.eg.sqlite"
        with tar.extractfile(member) as src, open(target, "wb") as dst:  # type: ignore[union-attr]
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return target


def read_rows(sqlite_path: Path) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        metadata = {name: value for name, value in con.execute("SELECT name, value FROM metadata")}
        aliases: dict[int, list[str]] = {}
        for gid, alias in con.execute("SELECT _id, alias_symbol FROM alias ORDER BY _id, alias_symbol"):
            aliases.setdefault(gid, []).append(alias)
        rows = []
        query = (
            "SELECT e.ensembl_id, i.symbol, g.gene_id, g._id FROM ensembl e "
            "JOIN genes g ON g._id = e._id JOIN gene_info i ON i._id = e._id "
            "ORDER BY e.ensembl_id, CAST(g.gene_id AS INTEGER)"
        )
        for ensembl_id, symbol, entrez, gid in con.execute(query):
            extra = [a for a in aliases.get(gid, []) if a != symbol and "|" not in a and "\t" not in a]
            rows.append((ensembl_id, symbol, str(entrez), "|".join(extra)))
    finally:
        con.close()
    return rows, {k: metadata[k] for k in METADATA_KEYS if k in metadata}


def write_table(rows: list[tuple[str, str, str, str]], out: Path) -> None:
    text = "\t".join(COLUMNS) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    # mtime=0 keeps the file byte-identical across rebuilds from the same source.
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9, filename="") as gz:
        gz.write(text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deb", type=Path, help="a downloaded r-bioc-org.hs.eg.db .deb")
    parser.add_argument("--sqlite", type=Path, help="an org.Hs.eg.sqlite (then give --version)")
    parser.add_argument("--version", help="source package version, with --sqlite")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gene-table-") as tmp:
        tmp_dir = Path(tmp)
        deb_sha256 = None
        if args.sqlite:
            if not args.version:
                parser.error("--sqlite needs --version (the source package's version)")
            sqlite_path, version = args.sqlite, args.version
        else:
            deb = args.deb or download_deb(tmp_dir)
            version = deb_field(deb, "Version")
            deb_sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
            sqlite_path = extract_sqlite(deb, tmp_dir)
        rows, metadata = read_rows(sqlite_path)

    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "human_genes.tsv.gz"
    write_table(rows, table)
    source = {
        "species": "human",
        "source": f"Debian package {PACKAGE} (Bioconductor org.Hs.eg.db)",
        "package": PACKAGE,
        "version": version,
        "deb_sha256": deb_sha256,
        "database": metadata,
        "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows": len(rows),
        "ensembl_ids": len({r[0] for r in rows}),
        "symbols": len({r[1] for r in rows}),
        "columns": list(COLUMNS),
        "file": table.name,
        "file_sha256": hashlib.sha256(table.read_bytes()).hexdigest(),
        "builder": "scripts/build_gene_table.py",
    }
    (args.out / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"wrote {table} ({len(rows)} rows, {table.stat().st_size / 1e6:.2f} MB) from {PACKAGE} {version}")


if __name__ == "__main__":
    main()
