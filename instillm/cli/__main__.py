"""`python -m instillm.cli ...`: the same as the `instillm` command."""

from instillm.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
