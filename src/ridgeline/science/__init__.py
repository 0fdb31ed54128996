"""Why the flat directions exist: formulas, instrumentation, and the experiments that test them."""
