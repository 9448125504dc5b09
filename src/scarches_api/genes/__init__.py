"""Gene identifiers: tell which kind a data set uses, and match a query's genes onto a reference's.

A query in Ensembl ids (with or without ``.N`` version suffixes) maps onto a reference in symbols and the reverse,
through a human table shipped with the package (``data/human_genes.tsv.gz``, built by ``scripts/build_gene_table.py``
from Debian's r-bioc-org.hs.eg.db; its source and version are in ``data/SOURCE.json``). Nothing is downloaded at run
time. The table is read once, on first use.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterable, Literal, Sequence

IdKind = Literal["symbol", "ensembl", "ensembl_versioned", "mixed", "unknown"]
Species = Literal["human", "mouse"]

# Routes in the order they are tried: a reference gene is claimed by the most direct route that reaches it, so a
# query's own exact name always wins over a translated one.
ROUTES: tuple[str, ...] = (
    "identical",  # same name on both sides
    "version_stripped",  # ENSG...\.7 vs ENSG... (or another version)
    "case_insensitive",  # same name up to case
    "ensembl_to_symbol",  # query Ensembl id -> the gene's official symbol in the reference
    "symbol_to_ensembl",  # query official symbol -> its Ensembl id in the reference
    "ensembl_to_alias",  # query Ensembl id -> a retired symbol / alias of the gene in the reference (e.g. IGJ)
    "alias_to_ensembl",  # query retired symbol / alias -> the gene's Ensembl id in the reference
    "symbol_renamed",  # query and reference name the same gene by different symbols (IGJ vs JCHAIN)
)

# ENSG00000141510, ENSG00000141510.17, ENSG00000002586.20_PAR_Y (GENCODE), ENSMUSG..., other species ENS<XXX>G...
_ENSEMBL = re.compile(r"^(ENS([A-Z]*)G\d{11})(\.\d+)?(_PAR_Y)?$")
_SHARE_FOR_KIND = 0.9  # ids of one kind needed to call a data set that kind
_SHARE_FOR_MIXED = 0.1  # each kind at least this share -> "mixed"
_SHARE_KNOWN_SYMBOLS = 0.3  # real symbol data sets know far more; gene_1, gene_2 ... know none


@dataclass(frozen=True)
class GeneIdType:
    """What a list of gene names looks like: kind, species, and the share of names recognised as that."""

    kind: IdKind
    species: Species | None
    recognised: float
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Harmonisation:
    """How a query's genes match a reference's: query name -> reference name, and how many by which route."""

    mapping: dict[str, str]
    routes: dict[str, int]
    n_query: int
    n_reference: int
    unmatched_reference: int
    duplicates: int  # query genes whose reference gene was already taken by an earlier (or more direct) query gene
    table: dict[str, Any]

    @property
    def matched(self) -> int:
        return len(self.mapping)

    @property
    def share_of_reference(self) -> float:
        """Share (0..1) of reference genes that a query gene maps to."""
        return self.matched / self.n_reference if self.n_reference else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The figures for a report (without the mapping itself, which can hold 30k entries)."""
        return {
            "query_genes": self.n_query,
            "reference_genes": self.n_reference,
            "matched": self.matched,
            "share_of_reference": round(self.share_of_reference, 4),
            "routes": dict(self.routes),
            "unmatched_reference": self.unmatched_reference,
            "duplicates": self.duplicates,
            "table": dict(self.table),
        }


class GeneTable:
    """The human Ensembl <-> symbol table as lookups. Build with ``gene_table()`` (cached)."""

    def __init__(self, rows: Iterable[Sequence[str]], source: dict[str, Any]) -> None:
        self.source = source
        self.ensembl_to_symbols: dict[str, list[str]] = {}
        self.ensembl_to_aliases: dict[str, list[str]] = {}
        self.symbol_to_ensembl: dict[str, list[str]] = {}
        alias_to_ensembl: dict[str, list[str]] = {}
        for ensembl_id, symbol, _entrez, aliases in rows:
            _append(self.ensembl_to_symbols, ensembl_id, symbol)
            _append(self.symbol_to_ensembl, symbol, ensembl_id)
            for alias in filter(None, aliases.split("|")):
                _append(self.ensembl_to_aliases, ensembl_id, alias)
                _append(alias_to_ensembl, alias, ensembl_id)
        # An alias that is another gene's official symbol would send the query to the wrong gene: never use it.
        self.alias_to_ensembl = {a: e for a, e in alias_to_ensembl.items() if a not in self.symbol_to_ensembl}
        self.upper_symbols = {s.upper() for s in self.symbol_to_ensembl} | {a.upper() for a in self.alias_to_ensembl}

    def is_symbol(self, name: str) -> bool:
        return name in self.symbol_to_ensembl or name in self.alias_to_ensembl

    def genes_of_symbol(self, name: str) -> list[str]:
        """Ensembl ids of a symbol (official first; aliases only when it is no gene's official symbol)."""
        return self.symbol_to_ensembl.get(name) or self.alias_to_ensembl.get(name, [])

    def names_of_gene(self, ensembl_id: str, *, aliases: bool) -> list[str]:
        if not aliases:
            return self.ensembl_to_symbols.get(ensembl_id, [])
        return [a for a in self.ensembl_to_aliases.get(ensembl_id, []) if a in self.alias_to_ensembl]


def _append(index: dict[str, list[str]], key: str, value: str) -> None:
    values = index.setdefault(key, [])
    if value not in values:
        values.append(value)


@lru_cache(maxsize=1)
def gene_table() -> GeneTable:
    """The packaged human table, read on first use (about 0.2 s) and cached."""
    data = resources.files(__package__) / "data"
    source = json.loads((data / "SOURCE.json").read_text())
    with (data / "human_genes.tsv.gz").open("rb") as raw, gzip.open(raw, "rt") as text:
        lines = text.read().splitlines()
    rows = (line.split("\t") for line in lines[1:] if line)
    return GeneTable(rows, _table_summary(source))


def _table_summary(source: dict[str, Any]) -> dict[str, Any]:
    keep = ("species", "source", "package", "version", "built", "rows")
    summary = {k: source[k] for k in keep if k in source}
    summary["source_date"] = source.get("database", {}).get("EGSOURCEDATE")
    return summary


def table_source() -> dict[str, Any]:
    """Source, version, build date and row count of the packaged gene table."""
    return dict(gene_table().source)


def strip_version(name: str) -> str | None:
    """The unversioned Ensembl id of ``name`` (keeping a ``_PAR_Y`` suffix), or None when it is no Ensembl id."""
    match = _ENSEMBL.match(name)
    if match is None:
        return None
    return match.group(1) + (match.group(4) or "")


def detect_id_type(names: Sequence[str]) -> GeneIdType:
    """Say whether ``names`` are gene symbols or Ensembl ids (versioned or not), of which species, and how sure."""
    table = gene_table()
    counts = dict.fromkeys(
        ("ensembl", "ensembl_versioned", "human_symbol", "mouse_symbol", "other"), 0
    )
    prefixes: dict[str, int] = {}
    for raw in names:
        name = str(raw)
        match = _ENSEMBL.match(name)
        if match is not None:
            counts["ensembl_versioned" if match.group(3) else "ensembl"] += 1
            prefixes[match.group(2)] = prefixes.get(match.group(2), 0) + 1
        elif table.is_symbol(name):
            counts["human_symbol"] += 1
        elif name[:1].isupper() and name[1:] != name[1:].upper() and name.upper() in table.upper_symbols:
            # Mouse symbols are capitalised (Cd4, Actb); most share their letters with the human ortholog.
            counts["mouse_symbol"] += 1
        else:
            counts["other"] += 1
    n = len(names)
    if n == 0:
        return GeneIdType("unknown", None, 0.0, counts)
    n_ensembl = counts["ensembl"] + counts["ensembl_versioned"]
    n_symbol = counts["human_symbol"] + counts["mouse_symbol"]
    if n_ensembl >= _SHARE_FOR_KIND * n:
        kind: IdKind = "ensembl_versioned" if counts["ensembl_versioned"] > counts["ensembl"] else "ensembl"
        top = max(prefixes, key=prefixes.__getitem__)
        species = {"": "human", "MUS": "mouse"}.get(top)
        return GeneIdType(kind, species, round(n_ensembl / n, 4), counts)  # type: ignore[arg-type]
    if n_ensembl >= _SHARE_FOR_MIXED * n and n - n_ensembl >= _SHARE_FOR_MIXED * n:
        return GeneIdType("mixed", None, round((n_ensembl + n_symbol) / n, 4), counts)
    if n_symbol >= _SHARE_KNOWN_SYMBOLS * n:
        species = "human" if counts["human_symbol"] >= counts["mouse_symbol"] else "mouse"
        return GeneIdType("symbol", species, round(n_symbol / n, 4), counts)  # type: ignore[arg-type]
    return GeneIdType("unknown", None, round((n_ensembl + n_symbol) / n, 4), counts)


def harmonise(query_names: Sequence[str], reference_names: Sequence[str]) -> Harmonisation:
    """Match query genes onto reference genes, one to one, by the most direct route that works.

    ``mapping`` holds query name -> reference name for every query gene that matched; renaming the query's
    var_names through it lines the query up with the reference. When several query genes reach one reference gene,
    the one reached by the more direct route (then the earlier one) keeps it and the others count as ``duplicates``.
    """
    table = gene_table()
    reference = [str(g) for g in reference_names]
    ref_set = set(reference)
    ref_by_stripped: dict[str, list[str]] = {}
    ref_by_upper: dict[str, list[str]] = {}
    for name in dict.fromkeys(reference):
        stripped = strip_version(name)
        if stripped is not None:
            ref_by_stripped.setdefault(stripped, []).append(name)
        ref_by_upper.setdefault(name.upper(), []).append(name)

    query = [str(g) for g in query_names]
    unique_query = list(dict.fromkeys(query))
    stripped_query = {q: strip_version(q) for q in unique_query}
    ensembl_of = stripped_query.__getitem__  # the regex runs once per name, not once per route

    def present(names: Iterable[str]) -> list[str]:
        return [n for n in names if n in ref_set]

    def by_ensembl(ids: Iterable[str]) -> list[str]:
        return [r for e in ids for r in ref_by_stripped.get(e, ())]

    resolvers: dict[str, Callable[[str], list[str]]] = {
        "identical": lambda q: [q] if q in ref_set else [],
        "version_stripped": lambda q: by_ensembl([s]) if (s := ensembl_of(q)) else [],
        "case_insensitive": lambda q: ref_by_upper.get(q.upper(), []),
        "ensembl_to_symbol": lambda q: present(table.names_of_gene(s, aliases=False)) if (s := ensembl_of(q)) else [],
        "symbol_to_ensembl": lambda q: by_ensembl(table.symbol_to_ensembl.get(q, ())),
        "ensembl_to_alias": lambda q: present(table.names_of_gene(s, aliases=True)) if (s := ensembl_of(q)) else [],
        "alias_to_ensembl": lambda q: by_ensembl(table.alias_to_ensembl.get(q, ())),
        "symbol_renamed": lambda q: [
            r
            for e in table.genes_of_symbol(q)
            for r in present(table.names_of_gene(e, aliases=False) + table.names_of_gene(e, aliases=True))
            if r != q
        ],
    }

    mapping: dict[str, str] = {}
    claimed: set[str] = set()
    collided: set[str] = set()
    routes = dict.fromkeys(ROUTES, 0)
    pending = unique_query
    for route in ROUTES:
        resolve, still_pending = resolvers[route], []
        for q in pending:
            candidates = resolve(q)
            free = next((c for c in candidates if c not in claimed), None)
            if free is None:
                if candidates:
                    collided.add(q)
                still_pending.append(q)
                continue
            mapping[q] = free
            claimed.add(free)
            routes[route] += 1
        pending = still_pending
    duplicates = len(collided - mapping.keys()) + (len(query) - len(unique_query))
    return Harmonisation(
        mapping=mapping,
        routes=routes,
        n_query=len(query),
        n_reference=len(reference),
        unmatched_reference=len(ref_set - claimed),
        duplicates=duplicates,
        table=dict(table.source),
    )


def to_ensembl(names: Sequence[str], *, version: int | None = None) -> list[str]:
    """Human symbols -> Ensembl ids (``ENSG...`` or ``ENSG....<version>``), one to one; names the table can't convert
    (or whose gene an earlier name took) are kept as they are. For building Ensembl-named test data and demos."""
    table, taken, out = gene_table(), set(), []
    for name in map(str, names):
        ensembl = next((e for e in table.genes_of_symbol(name) if e not in taken), None)
        if ensembl is None:
            out.append(name)
            continue
        taken.add(ensembl)
        out.append(ensembl if version is None else f"{ensembl}.{version}")
    return out


__all__ = [
    "ROUTES",
    "GeneIdType",
    "GeneTable",
    "Harmonisation",
    "detect_id_type",
    "gene_table",
    "harmonise",
    "strip_version",
    "table_source",
    "to_ensembl",
]
