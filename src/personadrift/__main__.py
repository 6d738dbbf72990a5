import sys

from personadrift.cli import main

sys.exit(main())
