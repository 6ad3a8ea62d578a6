"""``python -m graft`` is the ``graft`` command."""

from graft.cli import main

main()
