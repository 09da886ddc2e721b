"""``python -m imgflow``: the same command line as the ``imgflow`` console script."""

from imgflow.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
