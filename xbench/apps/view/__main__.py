import sys

from xbench.apps.view import main

sys.exit(main())
