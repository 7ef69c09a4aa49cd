"""The spool: the contract between the listener and the tap.

The listener appends accepted events to it; the tap reads them back in arrival
order. `local.py` keeps it in segment files on the listener's disk.
"""
