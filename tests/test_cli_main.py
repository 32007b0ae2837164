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


def test_global_options_before_or_after_the_subcommand():
    from ctagrg.cli.main import build_parser

    parser = build_parser()
    before = parser.parse_args(["--quiet", "--log-level", "debug", "report", "x", "--model", "m"])
    after = parser.parse_args(["report", "x", "--model", "m", "-q", "--progress-interval", "5",
                               "--stop-signals", "SIGUSR2"])
    assert (before.quiet, before.log_level) == (True, "debug") and not hasattr(before, "progress_interval")
    assert (after.quiet, after.progress_interval, after.stop_signals) == (True, 5.0, "SIGUSR2")
    assert not hasattr(parser.parse_args(["report", "x", "--model", "m"]), "quiet")


def test_bad_global_option_values_are_usage_errors(capsys):
    import pytest

    from ctagrg.cli.main import main

    for argv, message in ((["--progress-interval", "-1", "report"], "expected seconds >= 0, got '-1'"),
                          (["--stop-signals", "SIGNOPE", "report"], "'SIGNOPE' is not a signal name"),
                          (["--log-level", "loud", "report"], "invalid choice: 'loud'")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
