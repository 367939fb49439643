"""`python -m gptpipe.ci ARGS` is `gptpipe ci ARGS`."""
import sys

from ..cli import main

main(["ci", *sys.argv[1:]])
