"""``python -m latentmap`` (what torchrun runs) is the command line."""

from latentmap.cli import main

if __name__ == "__main__":
    main()
