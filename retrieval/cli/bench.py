"""`geoloc benchmark` and `geoloc demo`: the three methods trained side by side on a rendered city."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli.apps import SetOption, app


# --- the main job ----------------------------------------------------------------------------------

@app.command("benchmark")
def benchmark_cmd(
    config: Path = typer.Option(..., "--config", help="Benchmark config, e.g. configs/bench_london.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<name>)."),
    overrides: Optional[List[str]] = SetOption,
):
    """Render a city, train every method of bench.methods under one budget, evaluate, report.
    Run it again with the same --out to resume after a kill."""
    from retrieval.config import load_config
    from retrieval.reports.benchmark import run_benchmark
    from retrieval.run import lock_run_dir

    cfg = load_config(config, overrides)
    out = out or Path("runs") / cfg.name
    lock_run_dir(out, "benchmark")
    report = run_benchmark(cfg, out)
    typer.echo(f"report: {report / 'report.md'}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    overrides: Optional[List[str]] = SetOption,
):
    """The whole job on the embedded procedural demo city: no data files needed."""
    from retrieval.config import load_config
    from retrieval.reports.benchmark import DEMO, demo_query_hint, run_benchmark
    from retrieval.run import lock_run_dir

    cfg = load_config(None, overrides, base=DEMO)
    lock_run_dir(out, "demo")
    report = run_benchmark(cfg, out)
    typer.echo(f"report: {report / 'report.md'}")
    typer.echo(demo_query_hint(out))
