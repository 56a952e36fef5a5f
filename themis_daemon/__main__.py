import sys

if __name__ == "__main__":  # scan worker processes re-import this module as __mp_main__: keep it light
    from .cli import main

    sys.exit(main())
