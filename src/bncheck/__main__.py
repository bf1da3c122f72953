import sys

try:
    from bncheck.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command line: exit 130, one line
    sys.stderr.write("Error: interrupted (Ctrl-C) before the command started; nothing was "
                     "done\n")
    sys.exit(130)

main(prog_name="bncheck")
