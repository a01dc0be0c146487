"""`python -m saekit ...` is `sae ...`."""

from saekit.cli import main

main()
