"""`e2e`'s entry point, outside the endtoend package on purpose.

Importing endtoend loads torch, which takes a second or more. A Ctrl-C raised in the middle
of that import can leave numpy or torch half-initialised and end in a long traceback (or a
different error altogether), so during the import a Ctrl-C is only noted; once the import is
done it ends the command with one line and exit code 130, as a Ctrl-C anywhere later does
(endtoend.cli.main handles those).
"""

import signal
import sys


def main() -> int:
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: interrupted.append(number))
    try:
        from endtoend.cli import main as run
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
