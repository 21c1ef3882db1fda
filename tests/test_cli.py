import subprocess
import sys

from tests.conftest import REPO, write_image


def geoloc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "retrieval.cli", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_command_groups():
    out = geoloc("--help")
    assert out.returncode == 0
    for group in ("data", "synth", "train", "index", "query", "evaluate", "benchmark", "demo"):
        assert f" {group} " in out.stdout, group


def test_import_then_split_then_check(tmp_path):
    for i in range(30):
        write_image(tmp_path / "src" / f"{51.51 + 0.0004 * (i % 6):.5f}_{-0.10 + 0.0006 * (i // 6):.5f}.jpg")
    out = geoloc("data", "import", tmp_path / "src", "--format", "seed", "--out", tmp_path / "m.csv")
    assert out.returncode == 0, out.stderr
    assert "30 photos" in out.stdout
    assert (tmp_path / "m.csv").read_text().count("\n") == 31
    out = geoloc("data", "split", tmp_path / "m.csv", "--out", tmp_path / "s.csv", "--mode", "spatial",
                 "--block-m", "60")
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "dropped" in out.stdout
    # place recognition: photos 44 m apart along the grid have no neighbour within 25 m to be held out by
    out = geoloc("data", "split", tmp_path / "m.csv", "--out", tmp_path / "p.csv", "--radius-m", "70")
    assert out.returncode == 0 and "(place): train 24, val 3, test 3" in out.stdout, out.stdout
    out = geoloc("data", "check", tmp_path / "s.csv")
    assert out.returncode == 0 and "good photos" in out.stdout


def test_user_mistake_is_one_line_without_traceback(tmp_path):
    (tmp_path / "m.csv").write_text("path,lat,lon\na.jpg,91,0\n")
    out = geoloc("data", "check", tmp_path / "m.csv")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "row 2: lat 91 is out of range" in out.stderr


def test_skip_bad_reports_count(tmp_path):
    (tmp_path / "m.csv").write_text("path,lat,lon\na.jpg,51,0\nb.jpg,51,0\n")
    write_image(tmp_path / "a.jpg")
    out = geoloc("data", "check", tmp_path / "m.csv", "--skip-bad")
    assert out.returncode == 0
    assert "1 good photos, 1 bad rows skipped" in out.stdout
    assert "warning:" in out.stderr and "b.jpg" in out.stderr


NO_TORCH = """import runpy, sys
sys.argv = ["geoloc", *sys.argv[1:]]
try:
    runpy.run_module("retrieval.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("torch loaded:", "torch" in sys.modules, "exit:", code)
"""


def test_help_and_data_commands_load_no_torch(tmp_path):
    """`geoloc --help` and the data commands answer without loading torch (seconds on a cold machine)."""
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 150)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,lat,lon\na.png,51.5,-0.1\n")
    for args in (["--help"], ["data", "--help"], ["data", "check", str(tmp_path / "m.csv")]):
        out = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True).stdout
        assert out.strip().splitlines()[-1] in ("torch loaded: False exit: 0", "torch loaded: False exit: None"), (args, out)


def test_the_readme_command_table_lists_every_command():
    """Every command the CLI has (walked from its click tree, without running anything) has a row."""
    import typer.main

    from retrieval.cli import app

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Command line"):readme.index("## Configuration")]

    def leaves(cmd, prefix):
        subs = getattr(cmd, "commands", None)
        if not subs:
            return [prefix]
        return [c for name, sub in subs.items() for c in leaves(sub, f"{prefix} {name}")]

    commands = leaves(typer.main.get_command(app), "geoloc")
    assert len(commands) >= 15, commands
    spans = [row.split("`")[1].replace("\\|", "|").split() for row in table.splitlines() if row.startswith("| `geoloc")]
    missing = []
    for c in commands:  # a row may join alternatives: `geoloc train cells|regression|embedding`
        *head, last = c.split()
        if not any(s[:len(head)] == head and len(s) > len(head) and last in s[len(head)].split("|") for s in spans):
            missing.append(c)
    assert not missing, missing
