"""`python -m endtoend.cli ...`: the same as `e2e ...`."""

import sys

from endtoend.cli import main

sys.exit(main())
