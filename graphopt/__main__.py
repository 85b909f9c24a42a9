import sys

from graphopt.cli.main import main

sys.exit(main())
