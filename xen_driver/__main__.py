"""``python -m xen_driver``: what the plugin launcher runs."""

import sys

from xen_driver.cli import main

sys.exit(main())
