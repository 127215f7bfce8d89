"""`python -m pipeline.cli ...` runs the CLI (tests start it this way)."""

from pipeline.cli import main

if __name__ == "__main__":
    main()
