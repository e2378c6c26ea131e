import sys

from labo_fairseq.experiment import main

sys.exit(main())
