from recorderd.cli import main
import sys
sys.exit(main())
