"""The scenarios by name, in the order they run; each module's run(b) returns its results."""

from . import after, dense, firsttouch, fleet, sparse, vmview

SCENARIOS = {"dense": dense, "sparse": sparse, "vmview": vmview,
             "firsttouch": firsttouch, "after": after, "fleet": fleet}
