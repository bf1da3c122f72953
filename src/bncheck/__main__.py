import sys

try:
    from bncheck.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command line: exit 130, one line
    import contextlib
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # the interrupted import may have left it half-made
        from bncheck.cli._app import forget_unhandled_ctrl_c

        forget_unhandled_ctrl_c()
    sys.stderr.write("Error: interrupted (Ctrl-C) before the command started; nothing was "
                     "done\n")
    sys.exit(130)

main(prog_name="bncheck")
