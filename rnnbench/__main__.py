"""``python -m rnnbench ...`` is the same as the ``rnnbench`` command."""

from .cli import main

if __name__ == "__main__":
    main()
