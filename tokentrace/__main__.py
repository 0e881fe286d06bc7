"""``python -m tokentrace``."""

from tokentrace.cli import main

main()
