import sys

from nextls.cli import main

sys.exit(main())
