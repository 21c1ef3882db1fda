"""The command tree every command module hangs its commands on, the options they share, and say()."""
from __future__ import annotations

import sys

import typer

app = typer.Typer(help="Locate street-level photos within a city.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Import, check and split geotagged photo manifests.", no_args_is_help=True)
synth_app = typer.Typer(help="Render street-level views from OpenStreetMap (demo city or a real .osm).",
                        no_args_is_help=True)
train_app = typer.Typer(help="Train a model: cells, regression or embedding.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect FAISS indexes of training photos.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(synth_app, name="synth")
app.add_typer(train_app, name="train")
app.add_typer(index_app, name="index")

SetOption = typer.Option(None, "--set", help="Override a config value: section.key=value (repeatable).")
DataOption = typer.Option(None, "--data", help="Data folder (train.csv, optional val.csv and test.csv) or a manifest CSV.")
ConfigOption = typer.Option(None, "--config", help="YAML config (see configs/).")
OutOption = typer.Option(None, "--out", help="Run directory (default: runs/<name>-<time>).")
ResumeOption = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
RandomizeOption = typer.Option("", "--randomize", help="Domain randomisation of the renders, comma-separated: sky, "
                               "facades, windows, occluders, furniture, camera, optics, or all (retrieval/synth/randomize.py).")


def say(line: str) -> None:
    """A warning or error on a line of its own, even while a progress bar is drawn."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        tqdm.write(line, file=sys.stderr)  # clears the bar, prints, redraws it
        return
    # In a log file a live bar's last redraw ends in "\r", not a newline: start a line of our own.
    live = bool(getattr(tqdm, "_instances", None))
    sys.stderr.write(("\n" if live else "") + line + "\n")
    sys.stderr.flush()
