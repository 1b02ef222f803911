"""``python -m portunus``: the same program as ``portunus-server``."""

from portunus.cli import main

if __name__ == "__main__":
    main()
