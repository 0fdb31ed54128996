"""The flat-direction tuner: invariant coordinates, the coordinate-descent search, its report."""
