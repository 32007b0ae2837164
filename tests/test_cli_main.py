import subprocess
import sys


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys, contextlib, io\n"
        "from ctagrg.cli.main import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print(buf.getvalue())\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_NOT_LOADED')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "CT-AGRG" in out
    assert "TORCH_NOT_LOADED" in out
