"""Isolation: run work in a child process, watch it, and take back what it sends.

Both of onnxport's child processes go through this package: the conversion child
(`python -m onnxport.execution ...`, which `execute_conversion` starts) and the export child
(`preparation`: a large model is loaded and exported in a process of its own, so that torch's
memory is gone before the passes). A platform call runs the second inside the first, and
both hops speak the same way:

- `channel`: what crosses between the two processes, and how (one socket pair, pickled
  messages: the parent's argument; the child's events, log records and outcome);
- `parent`: `run` a command, or `call` a function, in a child; watch it (timeout, interrupts,
  peak memory) and say in one sentence how a child that left no outcome ended;
- `child`: the child's side (its orphan watch, its logging, its outcome), and `serve`, the
  child of `call`.
"""
