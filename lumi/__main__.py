import sys

from lumi.cli import main

sys.exit(main())
