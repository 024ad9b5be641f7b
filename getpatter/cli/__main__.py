"""`python -m getpatter.cli`: the same as the `getpatter` command."""

import sys

from getpatter.cli import main

sys.exit(main())
