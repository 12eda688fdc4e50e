import sys

from recorderd.cli import main

sys.exit(main())
