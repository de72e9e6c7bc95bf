"""`camloop demo`: the whole loop on one machine, and its report."""
