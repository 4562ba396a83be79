import sys

from proxyfleet.cli import main

sys.exit(main())
