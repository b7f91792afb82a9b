"""``python -m copml`` runs the CLI."""

from copml.cli import main

main()
