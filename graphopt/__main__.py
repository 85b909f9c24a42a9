import sys

import graphopt

graphopt.unshadow_kernels()   # `python -m graphopt` from the checkout puts its root on sys.path

from graphopt.cli.main import main  # noqa: E402

sys.exit(main())
