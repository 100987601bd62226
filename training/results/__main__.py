import sys

from training.results.runner import main

sys.exit(main())
