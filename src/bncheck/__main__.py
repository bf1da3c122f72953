from bncheck.cli import main

main(prog_name="bncheck")
