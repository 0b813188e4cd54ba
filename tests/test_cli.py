import subprocess
import sys

from landcover import __version__
from landcover.cli import main, one_line
from landcover.errors import InputFileError


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "landcover", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "usage: landcover" in proc.stdout


def test_one_line_messages():
    assert (
        one_line(InputFileError("/x/y.tif", "not a raster\n(details)")) == "/x/y.tif: not a raster (details)"
    )
    err = FileNotFoundError(2, "No such file", "/nope")
    assert one_line(err) == "/nope: no such file or directory"
