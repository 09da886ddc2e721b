"""The engine: what a run decides, independent of where it executes (DESIGN.md §1-2).

  plan.py      walk the input and select against the state store: the work items
  chain.py     the stages set up on a device, applied to one batch (no threads, no queues)
  writer.py    output names, one owner per name, atomic writes
  record.py    outcomes into the state store (the lock holder only), counts, item_done hooks
  results.py   RunOptions and RunResult
  progress.py  the progress bar on a terminal

Executors (:mod:`imgflow.executors`) move work between these pieces; :mod:`imgflow.run` runs
one pipeline from the lock to the manifest with them.
"""
