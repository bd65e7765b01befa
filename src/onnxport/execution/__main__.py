"""`python -m onnxport.execution ...`: the conversion child, as the platform starts it."""

import sys

from onnxport.execution.child import child_main
from onnxport.process import exit_process, own_process

own_process()
exit_process(child_main(sys.argv[1:]))
