"""`python -m reviewstack.trainjob SPEC …` (what torchrun runs): the same as `reviewstack-train`."""

from reviewstack.trainjob.main import main

main()
