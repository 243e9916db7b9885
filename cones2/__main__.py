"""``python -m cones2`` runs the command line."""

from .cli import main

main()
