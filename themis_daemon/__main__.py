import sys

from .cli import main

if __name__ == "__main__":  # worker processes of the parallel scan re-import this module
    sys.exit(main())
