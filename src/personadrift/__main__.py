import sys

from personadrift.cli import main

# guarded: a spawned child process (vLLM's engine core) imports this module again
if __name__ == "__main__":
    sys.exit(main())
