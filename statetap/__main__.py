"""``python -m statetap``: the ``statetap`` command line (:func:`statetap.cli.main`)."""

import sys

from statetap.cli import main

sys.exit(main())
