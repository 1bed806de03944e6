"""`python -m newfuse.cli`: the same as the `newfuse` console script."""

from newfuse.cli import main

# Guarded: tools that import every module (the metrics docs test does) must not run the CLI.
if __name__ == "__main__":
    main()
