"""``python -m raigate`` runs the same CLI as the ``raigate`` command."""

from raigate.cli import main

if __name__ == "__main__":
    main()
