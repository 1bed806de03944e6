"""`python -m newfuse.cli`: the same as the `newfuse` console script."""

from newfuse.cli import main

main()
