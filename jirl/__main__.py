"""`python -m jirl <command>`: the `jirl` command (jirl.cli)."""

from jirl.cli import main

main()
