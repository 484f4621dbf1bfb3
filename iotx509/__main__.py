import sys

from iotx509.cli import main

sys.exit(main())
