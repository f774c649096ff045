import sys

from dfproxy.cli import main

sys.exit(main())
